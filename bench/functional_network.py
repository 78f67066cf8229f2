"""The functional mechanism's network on MNIST against DP-SGD on the same public features.

    python bench/functional_network.py              # the full table (about 15 min, 2 CPUs)
    python bench/functional_network.py --quick      # 1 seed, epsilons 1 and 4
    python bench/functional_network.py --noise gaussian --fm-only --no-crossover
                                                    # the (epsilon, delta) Gaussian release

What it measures, per epsilon and seed (10 IID clients holding MNIST's 50,000 official
training images; accuracy on the 10,000 test images, which nothing here tunes on):

* ``fm``: ``fm_network`` under ``privacy=functional``: each client releases its softmax
  statistics once (secret noise, :class:`privacy.laplace.SecureSource`), the server sums the
  releases and solves once (``functional_aggregation=objective``); rounds change nothing.
* ``dpsgd_head``: DP-SGD (Opacus, secure mode, PLD calibration under replace-one, the
  project's :func:`privacy.make_private`) training the same head on the same public features,
  FedAvg over ``--dpsgd-rounds`` rounds; its learning rate and rounds chosen on the public
  images (``x_public``) at epsilon 1, never on the test split.
* ``none_head``: the same head, FedAvg of plain SGD, same rounds; and ``ceiling``: the
  noiseless sum of the releases (the expansion's own optimum on these features).
* Zhao et al.'s setting: 3 of 10 clients flip their labels (``y -> 9 - y``); ``fm_fedavg`` is
  the plain sum of the 10 releases, ``fm_<scorer>`` the sum weighted by a reliability scorer
  reading the clients' released heads (post-processing), against the clean ``fm`` figure.
* The cost of a client's round: the functional mechanism's (features, release, local solve)
  against a non-private round (features, one epoch of SGD on the head).

The public extractor is trained on the 10,000 public validation images only
(:mod:`tasks.models.extractor`). DP-SGD with ``dpcnn`` end to end is not run here (about 7
minutes per federation on this machine's two CPUs); see docs/benchmarks.md for its figures.
Writes ``functional_network_results.csv`` beside this script (``--noise gaussian``:
``functional_network_gaussian_results.csv``, the analytic Gaussian release at delta 1e-5,
:mod:`privacy.functional.noise`; ``--fm-only`` skips the SGD baselines, which do not depend on
the functional mechanism's noise).
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy import make_generator, make_private, plan_dpsgd  # noqa: E402
from privacy.functional import head_kind  # noqa: E402
from privacy.laplace import SecureSource  # noqa: E402
from privacy.ledger import PrivacyLedger  # noqa: E402
from protocol.atomic import write_with  # noqa: E402
from reliability import aggregation_weights, make_scorer  # noqa: E402
from reliability.types import RoundInput  # noqa: E402
from tasks.data.registry import DatasetSpec, load_dataset  # noqa: E402
from tasks.models import ModelSpec, build_model  # noqa: E402
from tasks.models.functional import FunctionalModel  # noqa: E402
from tasks.training.loops import make_loader, train_epochs  # noqa: E402

CLIENTS = 10
HIDDEN = 16
DELTA = 1e-5
BATCH = 256
CLIP = 1.0
FLIPPED = 3
SCORERS = ("median_agreement", "output_agreement")
OUT = Path(__file__).with_name("functional_network_results.csv")
OUT_GAUSSIAN = Path(__file__).with_name("functional_network_gaussian_results.csv")
NOISE = "laplace"
"""``privacy.functional_noise`` of the releases (``--noise``)."""


def features(model: FunctionalModel, x: np.ndarray, chunk: int = 5000) -> np.ndarray:
    """The public extractor's feature rows (float64, in the unit ball), in chunks."""
    return np.concatenate([model.fm_features(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def partition(n: int, seed: int) -> list[np.ndarray]:
    """IID: a random permutation cut into ``CLIENTS`` equal parts."""
    return np.array_split(np.random.default_rng(seed).permutation(n), CLIENTS)


def accuracy(head: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ head.T).argmax(axis=1) == y).mean())


def fm_releases(
    x: np.ndarray, y: np.ndarray, parts: list[np.ndarray], epsilon: float | None
) -> list[dict[str, np.ndarray]]:
    """Each client's one release (``None``: the exact statistics, no noise)."""
    kind = head_kind("softmax")
    out = []
    for p in parts:
        targets = [(y[p] == k).astype(np.float64) for k in range(10)]
        if epsilon is None:
            arrays = kind.release(x[p], targets, 1e9, "l2", SecureSource())  # noise ~ 1e-8
        else:
            arrays = kind.release(
                x[p], targets, epsilon, "l2", SecureSource(), noise=NOISE, delta=DELTA
            )
        out.append(arrays)
    return out


def fm_solve(releases: list[dict[str, np.ndarray]], epsilon: float, weights=None) -> np.ndarray:
    kind = head_kind("softmax")
    d = releases[0]["gram"].shape[0]
    a = np.ones(len(releases)) if weights is None else np.asarray(weights)
    scale = kind.noise_scale(epsilon, "l2", d, 10, noise=NOISE, delta=DELTA)
    return kind.solve(releases, scale, a)


def sgd_fedavg(
    x: np.ndarray,
    y: np.ndarray,
    parts: list[np.ndarray],
    *,
    epsilon: float | None,
    lr: float,
    rounds: int,
) -> np.ndarray:
    """FedAvg of the head (``10 x d``, no bias), DP-SGD (secure) or plain SGD per client."""
    d = x.shape[1]
    global_head = nn.Linear(d, 10, bias=False)
    nn.init.zeros_(global_head.weight)
    xs = x.astype(np.float32)
    plans = {  # calibrated once per run (and client size), not every round
        n: plan_dpsgd(
            target_epsilon=epsilon,
            delta=DELTA,
            n_train=n,
            batch_size=BATCH,
            local_epochs=1,
            rounds=rounds,
        )
        for n in ({len(p) for p in parts} if epsilon is not None else ())
    }
    for _ in range(rounds):
        heads = []
        for p in parts:
            local = copy.deepcopy(global_head)
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            gen = make_generator(None, secure=True)
            loader = make_loader(xs[p], y[p], BATCH, gen)
            if epsilon is None:
                train_epochs(local, loader, opt, 1, torch.device("cpu"))
                heads.append(local.weight.detach().clone())
                continue
            private = make_private(
                model=local,
                optimizer=opt,
                data_loader=loader,
                plan=plans[len(p)],
                max_grad_norm=CLIP,
                generator=gen,
                secure=True,
            )
            train_epochs(
                private.module,
                private.data_loader,
                private.optimizer,
                1,
                torch.device("cpu"),
                empty_step=private.empty_step,
            )
            heads.append(private.plain_state_dict()["weight"])
        with torch.no_grad():
            global_head.weight.copy_(torch.stack(heads).mean(dim=0))
    return global_head.weight.detach().double().numpy()


def tune_dpsgd(x_pub_tr, y_pub_tr, x_pub_va, y_pub_va, seed: int) -> tuple[float, int]:
    """Learning rate and rounds for DP-SGD at epsilon 1, chosen on public images only.

    The public images are cut into 10 simulated clients of 800 (fewer records than the real
    clients' 5,000, so the choice is conservative) and scored on 2,000 held-out public images.
    """
    parts = partition(len(y_pub_tr), seed)
    best = (-1.0, 0.0, 0)
    for rounds in (3, 10):
        for lr in (0.5, 2.0, 8.0):
            head = sgd_fedavg(x_pub_tr, y_pub_tr, parts, epsilon=1.0, lr=lr, rounds=rounds)
            acc = accuracy(head, x_pub_va, y_pub_va)
            print(f"  tune dpsgd_head lr={lr:g} rounds={rounds}: public acc {acc:.4f}", flush=True)
            best = max(best, (acc, lr, rounds))
    return best[1], best[2]


def local_heads(releases: list[dict[str, np.ndarray]], epsilon: float) -> list[np.ndarray]:
    kind = head_kind("softmax")
    d = releases[0]["gram"].shape[0]
    return [
        kind.local_head(r, epsilon, "l2", np.zeros((10, d)), 0, noise=NOISE, delta=DELTA)
        for r in releases
    ]


def scored_weights(heads: list[np.ndarray], sizes: list[int], scorer: str) -> np.ndarray:
    """A reliability scorer on the clients' released heads (updates from the zero model)."""
    r = RoundInput(
        round=1,
        client_ids=tuple(range(len(heads))),
        updates=tuple({"head.weight": h} for h in heads),
        num_examples=tuple(sizes),
    )
    params = {"layers": 1} if scorer == "output_agreement" else {}
    scores = make_scorer(scorer, **params).score(r).scores
    a = aggregation_weights(scores, sizes, relative_threshold=0.5, by_reputation=False)
    n = np.asarray(sizes, dtype=np.float64)
    return a * n.sum() / n  # as ObjectiveFedAvg: 1 per kept client, 0 per excluded one


def round_cost(
    model: FunctionalModel, x_raw: np.ndarray, y: np.ndarray
) -> tuple[float, float, float]:
    """Seconds of one client's round: functional first round (features, release, solve), a
    later functional round (solve only), and a non-private round (one epoch of SGD)."""
    kind = head_kind("softmax")
    t0 = time.perf_counter()
    feats = features(model, x_raw)
    targets = [(y == k).astype(np.float64) for k in range(10)]
    arrays = kind.release(feats, targets, 1.0, "l2", SecureSource())
    kind.local_head(arrays, 1.0, "l2", np.zeros((10, feats.shape[1])), 0)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    kind.local_head(arrays, 1.0, "l2", np.zeros((10, feats.shape[1])), 0)
    later = time.perf_counter() - t0
    t0 = time.perf_counter()
    head = nn.Linear(model.head.in_features, 10, bias=False)
    loader = make_loader(x_raw, y, 32, torch.Generator().manual_seed(0))
    assert model.extractor is not None
    seq = nn.Sequential(model.extractor, head)
    train_epochs(seq, loader, torch.optim.SGD(head.parameters(), lr=0.1), 1, torch.device("cpu"))
    return first, later, time.perf_counter() - t0


Row = dict[str, object]


def mean_acc(rows: list[Row], method: str, eps: float | None, **match: object) -> float:
    accs = [
        float(str(r["accuracy"]))
        for r in rows
        if r["method"] == method
        and r["epsilon"] == eps
        and all(r.get(k) == v for k, v in match.items())
    ]
    return float(np.mean(accs)) if accs else float("nan")


def std_acc(rows: list[Row], method: str, eps: float | None) -> float:
    accs = [
        float(str(r["accuracy"])) for r in rows if r["method"] == method and r["epsilon"] == eps
    ]
    return float(np.std(accs)) if accs else float("nan")


def crossover(
    rows: list[Row],
    x: np.ndarray,
    y: np.ndarray,
    xt: np.ndarray,
    yt: np.ndarray,
    lr: float,
    dpsgd: bool = True,
) -> None:
    """Where the functional mechanism is ahead: few records per client, many DP-SGD rounds.

    ``dpsgd=False`` (``--fm-only``): the functional mechanism's rows only.
    """
    for n in (50, 200, 1000):
        parts = [p[:n] for p in partition(len(y), 2000 + n)]
        for eps in (0.5, 1.0, 4.0):
            fm = accuracy(fm_solve(fm_releases(x, y, parts, eps), eps), xt, yt)
            rows.append({"method": "fm", "epsilon": eps, "seed": 0, "accuracy": fm, "records": n})
            for rounds in (3, 20) if dpsgd else ():
                head = sgd_fedavg(x, y, parts, epsilon=eps, lr=lr, rounds=rounds)
                acc = accuracy(head, xt, yt)
                rows.append(
                    {
                        "method": "dpsgd_head",
                        "epsilon": eps,
                        "seed": 0,
                        "accuracy": acc,
                        "records": n,
                        "rounds": rounds,
                    }
                )
            print(f"  crossover n={n} eps={eps:g}: fm {fm:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, epsilons 1 and 4")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epsilons", default="0.5,1,2,4,8")
    ap.add_argument("--no-crossover", action="store_true", help="skip the records/rounds sweep")
    ap.add_argument("--noise", choices=("laplace", "gaussian"), default="laplace")
    ap.add_argument("--fm-only", action="store_true", help="skip the SGD baselines")
    args = ap.parse_args()
    global NOISE
    NOISE = args.noise
    out = OUT if NOISE == "laplace" else OUT_GAUSSIAN
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.set_num_threads(2)
    seeds = 1 if args.quick else args.seeds
    epsilons = [1.0, 4.0] if args.quick else [float(e) for e in args.epsilons.split(",")]

    t0 = time.perf_counter()
    bundle = load_dataset(DatasetSpec("mnist"))
    assert bundle.x_public is not None and bundle.y_public is not None
    model = build_model(ModelSpec("fm_network", (1, 28, 28), 10, HIDDEN, "mnist"), seed=0)
    assert isinstance(model, FunctionalModel) and model.extractor is not None
    x_tr, x_te = features(model, bundle.x_train), features(model, bundle.x_test)
    x_pub = features(model, bundle.x_public)
    y_tr, y_te, y_pub = bundle.y_train, bundle.y_test, bundle.y_public
    print(f"public extractor and features: {time.perf_counter() - t0:.0f} s, d = {x_tr.shape[1]}")

    lr, rounds = 0.0, 0
    if not args.fm_only:
        lr, rounds = tune_dpsgd(x_pub[:8000], y_pub[:8000], x_pub[8000:], y_pub[8000:], seed=0)
        print(f"dpsgd_head: lr {lr:g}, {rounds} rounds (chosen on public images at epsilon 1)")

    rows: list[Row] = []

    def add(method: str, eps: float | None, seed: int, acc: float, **extra: object) -> None:
        rows.append({"method": method, "epsilon": eps, "seed": seed, "accuracy": acc, **extra})

    n_full = len(y_tr) // CLIENTS
    for seed in range(seeds):
        parts = partition(len(y_tr), 1000 + seed)
        sizes = [len(p) for p in parts]
        exact = fm_releases(x_tr, y_tr, parts, None)
        add("ceiling", None, seed, accuracy(fm_solve(exact, 1e9), x_te, y_te), records=n_full)
        if not args.fm_only:
            plain = sgd_fedavg(x_tr, y_tr, parts, epsilon=None, lr=lr, rounds=rounds)
            acc = accuracy(plain, x_te, y_te)
            add("none_head", None, seed, acc, records=n_full, rounds=rounds)
        flipped_y = y_tr.copy()
        bad = np.concatenate(parts[:FLIPPED])
        flipped_y[bad] = 9 - flipped_y[bad]
        for eps in epsilons:
            clean = accuracy(fm_solve(fm_releases(x_tr, y_tr, parts, eps), eps), x_te, y_te)
            add("fm", eps, seed, clean, records=n_full)
            if not args.fm_only:
                t = time.perf_counter()
                head = sgd_fedavg(x_tr, y_tr, parts, epsilon=eps, lr=lr, rounds=rounds)
                seconds = round(time.perf_counter() - t, 1)
                acc = accuracy(head, x_te, y_te)
                add("dpsgd_head", eps, seed, acc, records=n_full, rounds=rounds, seconds=seconds)
            frel = fm_releases(x_tr, flipped_y, parts, eps)
            acc = accuracy(fm_solve(frel, eps), x_te, y_te)
            add("fm_fedavg_flipped", eps, seed, acc, records=n_full)
            heads = local_heads(frel, eps)
            for scorer in SCORERS:
                a = scored_weights(heads, sizes, scorer)
                acc = accuracy(fm_solve(frel, eps, a), x_te, y_te)
                add(f"fm_{scorer}_flipped", eps, seed, acc, records=n_full, kept=int((a > 0).sum()))
            done = [r for r in rows if r["seed"] == seed and r["epsilon"] == eps]
            summary = ", ".join(f"{r['method']} {float(str(r['accuracy'])):.4f}" for r in done)
            print(f"seed {seed} eps {eps:g}: {summary}", flush=True)

    sweep: list[Row] = []
    if not args.no_crossover:
        crossover(sweep, x_tr, y_tr, x_te, y_te, lr, dpsgd=not args.fm_only)
    fm_s, later_s, none_s = round_cost(model, bundle.x_train[:n_full], y_tr[:n_full])

    fields = ["method", "epsilon", "seed", "accuracy", "records", "rounds", "kept", "seconds"]
    if NOISE != "laplace":  # the Laplace table keeps its columns
        fields.append("noise")
        for r in rows + sweep:
            r["noise"] = NOISE if r["epsilon"] is not None else ""

    def write(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows + sweep)

    write_with(out, write)

    methods = ["fm"] + ([] if args.fm_only else ["dpsgd_head"])
    methods += ["fm_fedavg_flipped", *[f"fm_{s}_flipped" for s in SCORERS]]
    print(
        f"\nMNIST, {CLIENTS} IID clients of {n_full}, fm_network (public CNN, d = "
        f"{x_tr.shape[1]}), {seeds} seed(s), secret {NOISE} noise (delta "
        f"{DELTA:g} if gaussian); test accuracy, mean +- std"
    )
    if NOISE != "laplace":
        kind = head_kind("softmax")
        for eps in epsilons:
            event = kind.event(eps, noise=NOISE, delta=DELTA)
            spent = PrivacyLedger(DELTA, events=[event]).epsilon()
            sigma = kind.noise_scale(eps, "l2", x_tr.shape[1], 10, noise=NOISE, delta=DELTA)
            print(f"  eps {eps:g}: sigma {sigma * 2**0.5:.4g}, ledger epsilon {spent:.6f}")
    print("epsilon | " + " | ".join(methods))
    for eps in epsilons:
        cells = [f"{mean_acc(rows, m, eps):.4f} +- {std_acc(rows, m, eps):.4f}" for m in methods]
        print(f"{eps:g} | " + " | ".join(cells))
    for m in ("ceiling",) if args.fm_only else ("ceiling", "none_head"):
        print(f"{m} (no privacy): {mean_acc(rows, m, None):.4f} +- {std_acc(rows, m, None):.4f}")
    print(
        f"\nZhao et al.: {FLIPPED} of {CLIENTS} clients flip labels; accuracy / clean fm accuracy"
    )
    for eps in epsilons:
        clean = mean_acc(rows, "fm", eps)
        cells = [f"{m} {mean_acc(rows, m, eps) / clean:.3f}" for m in methods if "flipped" in m]
        print(f"{eps:g}: " + ", ".join(cells))
    if sweep:
        print("\ncrossover (1 seed): records per client | epsilon | fm | dpsgd_head 3 rounds | 20")
        for n in (50, 200, 1000):
            for eps in (0.5, 1.0, 4.0):
                fm = mean_acc(sweep, "fm", eps, records=n)
                d3 = mean_acc(sweep, "dpsgd_head", eps, records=n, rounds=3)
                d20 = mean_acc(sweep, "dpsgd_head", eps, records=n, rounds=20)
                lead = "fm ahead" if fm > max(d3, d20) else "dpsgd ahead"
                lead = "" if args.fm_only else lead
                print(f"{n} | {eps:g} | {fm:.4f} | {d3:.4f} | {d20:.4f} | {lead}")
    print(
        f"\nround cost of one client of {n_full}: functional first round {fm_s:.2f} s "
        f"(features, release, solve), later rounds {later_s:.4f} s (solve only); "
        f"none {none_s:.2f} s (one epoch of SGD on the head)"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
