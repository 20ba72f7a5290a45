"""DivideMix's own training loop on the fidelity subset: is the SSL shortfall ours or the recipe's?

    python benchmarks/dividemix_reference.py --data-root /tmp/c10 \
        --noise-file ../shared/data/noisy-labels/cifar10-classification-idn/dependent0.4.csv \
        --labels clean --nets 1 --out runs/dmx/clean1.json

``train``, ``warmup``, ``eval_train``, ``linear_rampup``, ``SemiLoss`` and
``test`` of DivideMix's official ``Train_cifar.py`` (github.com/LiJunnan1992/
DivideMix, HEAD), transcribed line for line, on the data, model and schedule
of ``hallnll fidelity`` (``params/fidelity-cifar10.yaml``: the first 5,000 /
2,000 CIFAR-10 images, PreActResNet-18 of base width 16, 30 epochs, 10 of
warm-up, lr 0.02 / 10 at epoch 25, bf16 autocast and channels_last on the
CPU, one thread). What differs from the official script, and only this:

- the data: hallnll's loader (the same images and noisy labels as the
  fidelity grid) and augmentation (random crop with 4 zero pixels + flip,
  as torchvision's ``RandomCrop(32, 4)`` + ``RandomHorizontalFlip``), the
  loaders as index permutations (``shuffle=True``, no ``drop_last``);
- the model: hallnll's PreActResNet-18 at ``--width`` (DivideMix's is width 64);
- the schedule scaled to the grid's (``--epochs``, ``--warm-up``, ``--decay``);
- seeded generators, and the GMM's ``random_state``.

``--nets 2`` is DivideMix (co-divide, co-guessing with the other network in
eval mode, the test on the sum of both networks' logits); ``--nets 1`` is
DivideMix without co-training (one network divides its own data and guesses
its own targets: the paper's Table 5 row 1, hallnll's variant ``gmm``);
``--nets 0`` is cross-entropy only (``warmup`` every epoch). ``--device
cuda --set train_subset=0 --set test_subset=0 --set width=0`` runs it at
the paper's scale (``benchmarks/gpu-reference.sh``). Nothing of
hallnll's method runs here: this is the yardstick for ``hallnll fidelity``'s
``gmm`` and ``ce`` rows. Writes one JSON line per epoch to stdout and the
whole table to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture

from hallnll.config import load_config
from hallnll.data.gpu import DeviceImages
from hallnll.models import build_model
from hallnll.train import prepare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True, help="folder holding cifar-10-batches-py/")
    ap.add_argument("--noise-file", required=True, help="label,label_noisy CSV (the published C-based labels)")
    ap.add_argument("--labels", choices=["clean", "noisy"], default="clean")
    ap.add_argument("--nets", type=int, choices=[0, 1, 2], default=1)
    ap.add_argument("--params", default="fidelity-cifar10", help="the setting whose data and model are used")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of --params (e.g. arch=preact_resnet18, train_subset=0, width=0)")
    ap.add_argument("--width", type=int, default=0, help="0: the params file's")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (bf16 autocast and channels_last on either)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--warm-up", type=int, default=10)
    ap.add_argument("--decay", type=int, default=25, help="lr / 10 from this epoch (0-based, as `epoch >= 150`)")
    ap.add_argument("--batch-size", type=int, default=64, help="DivideMix's (its warm-up uses twice this)")
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--lambda-u", type=float, default=25.0)
    ap.add_argument("--p-threshold", type=float, default=0.5)
    ap.add_argument("--T", type=float, default=0.5)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast / channels_last")
    ap.add_argument("--out", required=True, help="JSON file for the per-epoch table")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    over = [f"data_root={args.data_root}", f"noise_file={args.noise_file}", "progress=false", *args.set]
    if args.labels == "clean":
        over.append("noise=none")
    cfg = load_config(args.params, over)
    data, noisy, _ = prepare(cfg, progress=False)
    dev = torch.device(args.device)
    true, noisy, C, N = data.y_train.to(dev), noisy.to(dev), data.num_classes, len(noisy)
    y_test = data.y_test.to(dev)
    bf16 = not args.fp32
    X = DeviceImages(data.x_train, data.mean, data.std, dev, channels_last=bf16)
    XT = DeviceImages(data.x_test, data.mean, data.std, dev, channels_last=bf16)
    # hallnll's loader cuts the subset the params file names; DivideMix's eval_train sees every image
    gen = torch.Generator(dev).manual_seed(args.seed)
    width = args.width or cfg.width

    def fwd(net, x):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x).float()

    def aug(idx):  # transform_train: RandomCrop(32, padding=4), RandomHorizontalFlip, Normalize
        return X.batch(idx, augment=True, padding=4, hflip=True, generator=gen)

    def create_model():
        m = build_model(cfg.arch, C, data.in_channels, "", width)
        m = m.to(dev)
        return m.to(memory_format=torch.channels_last) if bf16 else m

    CE = nn.CrossEntropyLoss(reduction="none")
    CEloss = nn.CrossEntropyLoss()

    def linear_rampup(current, warm_up, rampup_length=16):
        current = np.clip((current - warm_up) / rampup_length, 0.0, 1.0)
        return args.lambda_u * float(current)

    def criterion(outputs_x, targets_x, outputs_u, targets_u, epoch, warm_up):  # SemiLoss
        probs_u = torch.softmax(outputs_u, dim=1)
        Lx = -torch.mean(torch.sum(F.log_softmax(outputs_x, dim=1) * targets_x, dim=1))
        Lu = torch.mean((probs_u - targets_u) ** 2)
        return Lx, Lu, linear_rampup(epoch, warm_up)

    def loader(idx, bs):  # DataLoader(shuffle=True), no drop_last
        p = idx[torch.randperm(len(idx), generator=gen, device=dev)]
        return [p[i:i + bs] for i in range(0, len(p), bs)]

    def train(epoch, net, net2, optimizer, lab_idx, lab_w, unl_idx):
        net.train()
        if net2 is not None:
            net2.eval()  # fix one network and train the other
        bs = args.batch_size
        wmap = torch.zeros(N, device=dev)
        wmap[lab_idx] = lab_w
        num_iter = (len(lab_idx) // bs) + 1
        unl_batches, ui = loader(unl_idx, bs), 0
        Lx = Lu = torch.zeros((), device=dev)
        for batch_idx, bi in enumerate(loader(lab_idx, bs)):
            if ui >= len(unl_batches):  # unlabeled_train_iter restarted
                unl_batches, ui = loader(unl_idx, bs), 0
            bu = unl_batches[ui]
            ui += 1
            inputs_x, inputs_x2, inputs_u, inputs_u2 = aug(bi), aug(bi), aug(bu), aug(bu)
            batch_size = len(bi)
            labels_x = torch.zeros(batch_size, C, device=dev).scatter_(1, noisy[bi].view(-1, 1), 1)
            w_x = wmap[bi].view(-1, 1).float()
            with torch.no_grad():
                # label co-guessing of unlabeled samples (one network: its own two views)
                outs = [fwd(net, inputs_u), fwd(net, inputs_u2)]
                if net2 is not None:
                    outs += [fwd(net2, inputs_u), fwd(net2, inputs_u2)]
                pu = sum(torch.softmax(o, dim=1) for o in outs) / len(outs)
                ptu = pu ** (1 / args.T)  # temperature sharpening
                targets_u = (ptu / ptu.sum(dim=1, keepdim=True)).detach()
                # label refinement of labeled samples
                outputs_x, outputs_x2 = fwd(net, inputs_x), fwd(net, inputs_x2)
                px = (torch.softmax(outputs_x, dim=1) + torch.softmax(outputs_x2, dim=1)) / 2
                px = w_x * labels_x + (1 - w_x) * px
                ptx = px ** (1 / args.T)
                targets_x = (ptx / ptx.sum(dim=1, keepdim=True)).detach()
            l = np.random.beta(args.alpha, args.alpha)
            l = max(l, 1 - l)
            all_inputs = torch.cat([inputs_x, inputs_x2, inputs_u, inputs_u2], dim=0)
            all_targets = torch.cat([targets_x, targets_x, targets_u, targets_u], dim=0)
            idx = torch.randperm(all_inputs.size(0), generator=gen, device=dev)
            mixed_input = l * all_inputs + (1 - l) * all_inputs[idx]
            mixed_target = l * all_targets + (1 - l) * all_targets[idx]
            logits = fwd(net, mixed_input)
            Lx, Lu, lamb = criterion(logits[:batch_size * 2], mixed_target[:batch_size * 2],
                                     logits[batch_size * 2:], mixed_target[batch_size * 2:],
                                     epoch + batch_idx / num_iter, args.warm_up)
            prior = torch.ones(C, device=dev) / C  # regularization
            pred_mean = torch.softmax(logits, dim=1).mean(0)
            penalty = torch.sum(prior * torch.log(prior / pred_mean))
            loss = Lx + lamb * Lu + penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return float(Lx.detach()), float(Lu.detach())

    def warmup(net, optimizer):
        net.train()
        for bi in loader(torch.arange(N, device=dev), args.batch_size * 2):
            optimizer.zero_grad()
            loss = CEloss(fwd(net, aug(bi)), noisy[bi])
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def logits_of(net, imgs):
        net.eval()
        return torch.cat([fwd(net, xb) for _, xb in imgs.iter_batches(500)])

    def eval_train(model):
        out = logits_of(model, X)
        losses = CE(out, noisy)
        losses = (losses - losses.min()) / (losses.max() - losses.min())
        input_loss = losses.reshape(-1, 1).cpu().numpy()
        gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=args.seed)
        gmm.fit(input_loss)
        prob = gmm.predict_proba(input_loss)[:, gmm.means_.argmin()]
        return torch.tensor(prob, dtype=torch.float32, device=dev), out

    def test(nets):
        outs = [logits_of(n, XT) for n in nets]
        acc = lambda o: float((o.argmax(1) == y_test).float().mean()) * 100  # noqa: E731
        return acc(sum(outs)), acc(outs[0])

    nets = [create_model() for _ in range(max(args.nets, 1))]
    opts = [torch.optim.SGD(n.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4) for n in nets]
    rows, t0 = [], time.time()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for epoch in range(args.epochs):
        lr = args.lr / 10 if epoch >= args.decay else args.lr
        for o in opts:
            for g in o.param_groups:
                g["lr"] = lr
        row: dict = {"epoch": epoch + 1}
        if epoch < args.warm_up or args.nets == 0:
            for n, o in zip(nets, opts):
                warmup(n, o)
        else:
            probs = [eval_train(n) for n in nets]
            for k, (n, o) in enumerate(zip(nets, opts)):
                other = k if args.nets == 1 else 1 - k  # co-divide: the other network's division
                prob = probs[other][0]
                pred = prob > args.p_threshold
                lx, lu = train(epoch, n, None if args.nets == 1 else nets[other], o, pred.nonzero().squeeze(1),
                               prob[pred], (~pred).nonzero().squeeze(1))
                if k == 0:  # the first network's division and its own predictions, as hallnll's diagnostics
                    own = probs[0][1].argmax(1)
                    row.update(labeled=int(pred.sum()),
                               labeled_precision=float((noisy[pred] == true[pred]).float().mean()),
                               unlabeled_pred_acc=float((own[~pred] == true[~pred]).float().mean())
                               if bool((~pred).any()) else None, Lx=lx, Lu=lu)
        row["test_acc"], row["test_acc_net1"] = test(nets)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
