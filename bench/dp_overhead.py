"""DP overhead: one local epoch with Opacus DP-SGD divided by the same epoch without DP.

Same model, data, batch size and learning rate; both variants alternate in one process so
machine noise hits them alike. Prints the per-repeat times and the median ratio.

    .venv/bin/python bench/dp_overhead.py [--dataset mnist] [--model dpcnn] [--repeats 5]

Defaults are the model and batch of ``bench/mnist_dpsgd.py`` (``dpcnn``, batch 600) and the
project's default ``privacy.grad_sample_mode`` (``ew``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from privacy import make_generator, make_private, plan_dpsgd
from tasks.data import DatasetSpec, load_dataset
from tasks.models import ModelSpec, build_model
from tasks.training import make_loader, train_epochs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--model", default="dpcnn")
    ap.add_argument("--hidden", type=int, default=32, help="model.hidden")
    ap.add_argument(
        "--grad-sample-mode", default="ew", help="privacy.grad_sample_mode: hooks, ew, functorch"
    )
    ap.add_argument("--examples", type=int, default=6000, help="one client's share (MNIST/10)")
    ap.add_argument("--batch-size", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    bundle = load_dataset(DatasetSpec(args.dataset))
    x, y = bundle.x_train[: args.examples], bundle.y_train[: args.examples]
    spec = ModelSpec(args.model, bundle.input_shape, bundle.num_classes, hidden=args.hidden)
    device = torch.device("cpu")
    plan = plan_dpsgd(
        target_epsilon=2.0,
        delta=1e-5,
        n_train=len(y),
        batch_size=args.batch_size,
        local_epochs=1,
        rounds=10,
    )

    def plain(seed: int) -> float:
        model = build_model(spec, seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loader = make_loader(x, y, args.batch_size, make_generator(seed))
        start = time.perf_counter()
        train_epochs(model, loader, opt, 1, device)
        return time.perf_counter() - start

    def private(seed: int) -> float:
        model = build_model(spec, seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = make_generator(seed)
        loader = make_loader(x, y, args.batch_size, gen)
        pt = make_private(
            model=model,
            optimizer=opt,
            data_loader=loader,
            plan=plan,
            max_grad_norm=1.0,
            generator=gen,
            grad_sample_mode=args.grad_sample_mode,
        )
        start = time.perf_counter()
        train_epochs(pt.module, pt.data_loader, pt.optimizer, 1, device)
        return time.perf_counter() - start

    plain(0), private(0)  # warm-up
    rows = []
    for r in range(args.repeats):
        tp, td = plain(r + 1), private(r + 1)
        rows.append((tp, td, td / tp))
        print(f"repeat {r + 1}: plain {tp:.3f} s, dp-sgd {td:.3f} s, ratio {td / tp:.2f}")
    ratio = statistics.median(r[2] for r in rows)
    print(
        f"DP overhead ({args.dataset}, {args.model}, {len(y)} examples, batch "
        f"{args.batch_size}, {args.grad_sample_mode}, torch threads {torch.get_num_threads()}): "
        f"median epoch-time ratio dp-sgd/plain = {ratio:.2f} over {args.repeats} repeats "
        "(target <= 2.0)"
    )


if __name__ == "__main__":
    main()
