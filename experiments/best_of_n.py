r"""Gold best-of-n curves on simulated-text (after Gao et al. 2023, "Scaling laws for reward model
overoptimization"): each model picks the best of n fresh responses by its proxy reward, the pick
is scored by the simulator's true (gold) reward, and the curve runs against KL_bon.

    python experiments/best_of_n.py [--models vrm,rm] [--prompts 64] [--max-n 64] [--seeds 1] [--steps 1000]

**Candidates.** For each held-out prompt (the distinct prompts of the ``test`` split, a seeded
subset of ``--prompts`` of them; 0 takes all) a pool of m = ``--max-n`` responses is drawn once
from the simulator with ``sample_responses(m, filler_rate=--filler-rate, ...)`` (default 0.5, so
the planted filler is independent of quality), from one seeded generator, the same pool for every
model and seed. Every (prompt, candidate) text goes through the MiniLM backbone once.

**Estimator.** Rather than nested prefixes of the pool (the standard cheap practice: best-of-n
from the first n candidates), the expected value of the best-of-n pick is estimated from all
n-subsets of the pool (Nakano et al. 2021; Gao et al. 2023), which is unbiased and has a lower
variance. With the m candidates ranked by proxy ascending, 1..m, and v_(i) a value of the
candidate of rank i (its gold reward, or 1 if it carries the filler),

    E[v of the best-of-n pick] = sum_{i=n}^{m} v_(i) * C(i - 1, n - 1) / C(m, n),

since the candidate of rank i is the pick of exactly the C(i - 1, n - 1) n-subsets that hold it
and n - 1 of the i - 1 below it. Ties in the proxy (the oracle's gold is discrete) are broken
uniformly at random, in expectation: the tied candidates share the mean weight of their ranks.
Each curve is the mean over prompts. KL_bon = log n - (n - 1) / n (the KL of the best-of-n
policy from the sampling policy).

**Proxies.** VRM and VRM with the paper's objective: the posterior-mean reward
(``reward_posterior``). ``vrm-risk-averse``: the recommended VRM's mean - kappa * sd, with kappa
from ``--kappas`` chosen on VALIDATION data only: ``validation_split(train, 0.2, seed=0)`` holds
out a fifth of the training prompts, a separate VRM (same preset, seed and budget) is fitted to
the rest, ``--val-prompts`` of the held-out prompts get ``--val-pool`` fresh candidates each, and
the kappa whose best-of-16 gold on them is highest wins (the smallest kappa on a tie); the test
prompts play no part. RM, tuned RM and twin: their forward ``model(h_x, h_xy)``. The oracle picks
by the gold reward itself.

**Output.** ``results.json`` (flat): ``{"n", "kl_bon", "oracle": {"gold", "filler_share"},
MODEL: {"gold", "filler_share", "gold_per_seed", "filler_share_per_seed"} for each model (names
as in common.MODELS, plus "vrm-risk-averse"), "kappa" (chosen, one per seed), "kappa_selection",
"data", "prompts", "pool", "filler_rate", "seeds", "compared"}``; per-model lists are the mean
over seeds, by n. ``best_of_n.png``: gold and filler share of the picks against KL_bon. A markdown
table: gold at n = 1, 4, 16, 64 and the filler share at n = 16.
"""

from __future__ import annotations

import math
import sys

import torch
from common import LABELS, curve, load, mean_sd, model_names, output_dir, parser, plt, show, write_results

from pyro_vrm import BackboneConfig, load_backbone, reward_mean_sd, sample_responses, true_reward, validation_split

RISK_AVERSE = "vrm-risk-averse"
NAMES = {**LABELS, RISK_AVERSE: "VRM, mean - kappa sd", "oracle": "oracle (gold reward)"}
TABLE_N = (1, 4, 16, 64)
KAPPA_N = 16


# -- the best-of-n estimator ---------------------------------------------------------------------
def bon_weights(m: int, n: int) -> torch.Tensor:
    """(m,) float64: the probability C(i - 1, n - 1) / C(m, n) that the candidate of proxy rank i
    (ascending, i = 1..m) is the best of a uniformly random n-subset of the m candidates."""
    if not 1 <= n <= m:
        raise ValueError(f"best-of-n needs 1 <= n <= m, not n={n}, m={m}")
    total = math.comb(m, n)
    return torch.tensor([math.comb(i - 1, n - 1) / total for i in range(1, m + 1)], dtype=torch.float64)


def best_of_n(proxy: torch.Tensor, value: torch.Tensor, n: int) -> torch.Tensor:
    """(P,) expected ``value`` of the best-of-n pick by ``proxy`` from each prompt's pool.

    proxy, value: (P, m), m candidates per prompt. Unbiased over all n-subsets of the pool:
    sum_i value_(i) C(i - 1, n - 1) / C(m, n), ranks by proxy ascending; tied candidates share the
    mean weight of their ranks (ties broken uniformly at random, in expectation).

    >>> best_of_n(torch.tensor([[0., 1., 2.]]), torch.tensor([[1., 2., 4.]]), 2).tolist()  # (2+4+4)/3
    [3.3333333333333335]
    """
    proxy, value = proxy.double(), value.double()
    m = proxy.shape[-1]
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), bon_weights(m, n).cumsum(0)])
    below = (proxy.unsqueeze(-1) > proxy.unsqueeze(-2)).sum(-1)       # (P, m) candidates ranked below
    tied = (proxy.unsqueeze(-1) == proxy.unsqueeze(-2)).sum(-1)       # (P, m) itself and its ties
    weight = (cum[below + tied] - cum[below]) / tied                  # mean weight of the tied ranks
    return (weight * value).sum(-1)


def kl_bon(n: int) -> float:
    """KL(best-of-n policy || sampling policy) = log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def curves(proxy: torch.Tensor, gold: torch.Tensor, filler: torch.Tensor, ns: list[int]) -> dict:
    """{"gold": [...], "filler_share": [...]} by n: means over prompts of the best-of-n pick."""
    return {"gold": [best_of_n(proxy, gold, n).mean().item() for n in ns],
            "filler_share": [best_of_n(proxy, filler, n).mean().item() for n in ns]}


# -- candidates ----------------------------------------------------------------------------------
def prompt_weights(pairs) -> dict[str, list[float]]:
    """prompt text -> its true objective weights (the data set's ``weights`` column)."""
    out = {}
    for prompt, w in zip(pairs["prompt"], pairs["weights"]):
        out.setdefault(prompt, w)
    return out


def subset(prompts: list[str], size: int, seed: int) -> list[str]:
    """A seeded subset of ``size`` prompts (all for 0 or more than there are), in their order."""
    if size <= 0 or size >= len(prompts):
        return prompts
    keep = sorted(torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))[:size].tolist())
    return [prompts[i] for i in keep]


def candidates(prompts: list[str], weights: dict, pool: int, filler_rate: float, seed: int, backbone) -> dict:
    """For P prompts, ``pool`` fresh responses each: their states, gold rewards and filler flags.

    Returns {"prompt_state", "response_state": (P * pool, H), "gold", "filler": (P, pool)}."""
    g = torch.Generator().manual_seed(seed)
    texts, gold, filler = [], [], []
    for prompt in prompts:
        responses, _, has_filler = sample_responses(pool, filler_rate, g)
        texts += responses
        gold.append([true_reward(prompt, r, weights[prompt]) for r in responses])
        filler.append(has_filler)
    prompt_state, response_state, _ = backbone.encode([p for p in prompts for _ in range(pool)], texts)
    return {"prompt_state": prompt_state, "response_state": response_state,
            "gold": torch.tensor(gold, dtype=torch.float64), "filler": torch.tensor(filler, dtype=torch.float64)}


def scores(model, cands: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(proxy mean, sd), each (P, m), of a fit of any kind on the candidates (a point estimate's sd is 0)."""
    mean, sd = reward_mean_sd(model, cands["prompt_state"], cands["response_state"])
    return mean.reshape(cands["gold"].shape), sd.reshape(cands["gold"].shape)


def choose_kappa(args, data, weights, prompt_texts, backbone, out, seed: int) -> dict:
    """kappa of ``--kappas`` with the highest best-of-16 gold on validation prompts (see the docstring)."""
    fit_part, held = validation_split(data["train"], 0.2, seed=0)
    val_prompts = subset([prompt_texts[i] for i in held.prompt_id.unique().tolist()], args.val_prompts, seed=0)
    _, vrm = curve("vrm", {"train": fit_part, "test": held}, out / f"vrm-validation-seed{seed}", seed=seed,
                   steps=args.steps, log_every=args.log_every)
    cands = candidates(val_prompts, weights, args.val_pool, args.filler_rate, args.sample_seed + 1, backbone)
    mean, sd = scores(vrm, cands)
    n = min(KAPPA_N, args.val_pool)
    gold = {k: best_of_n(mean - k * sd, cands["gold"], n).mean().item() for k in args.kappas}
    best = max(args.kappas, key=lambda k: (gold[k], -k))
    return {"kappa": best, "n": n, "validation_prompts": len(val_prompts), "pool": args.val_pool,
            "validation_gold": {str(k): v for k, v in gold.items()}}


# -- report --------------------------------------------------------------------------------------
def label(name: str, results: dict) -> str:
    """The display name of a curve; the risk-averse VRM's shows its kappa (one per seed)."""
    if name == RISK_AVERSE:
        return f"{NAMES[name]} (kappa = {', '.join(f'{k:g}' for k in results['kappa'])})"
    return NAMES[name]


def plot(results: dict, names: list[str], path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in [*names, "oracle"]:
        style = {"color": "black", "linestyle": "--"} if name == "oracle" else {}
        for ax, key in zip(axes, ("gold", "filler_share")):
            ax.plot(results["kl_bon"], results[name][key], marker="o", markersize=3, label=label(name, results), **style)
    axes[0].set(xlabel="KL_bon = log n - (n - 1)/n", ylabel="gold reward of the pick", title="best-of-n gold reward")
    axes[1].set(xlabel="KL_bon = log n - (n - 1)/n", ylabel="share of picks with the filler",
                title="filler share of the picks")
    axes[1].axhline(results["filler_rate"], color="grey", linewidth=0.8, linestyle=":")
    axes[0].legend(fontsize=7)
    for x, n in zip(results["kl_bon"], results["n"]):
        axes[0].annotate(f"n={n}", (x, results["oracle"]["gold"][results["n"].index(n)]), fontsize=6,
                         textcoords="offset points", xytext=(0, 4), ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict, names: list[str]) -> None:
    """Print the table of the gold reward and filler share of the picks, and keep it in ``results``."""
    ns = results["n"]
    gold_n = [n for n in TABLE_N if n in ns]
    filler_n = KAPPA_N if KAPPA_N in ns else ns[-1]
    rows = []
    for name in [*names, "oracle"]:
        r = results[name]
        per_seed = r.get("gold_per_seed", [r["gold"]])
        fill = r.get("filler_share_per_seed", [r["filler_share"]])
        rows.append([label(name, results), *(mean_sd([g[ns.index(n)] for g in per_seed]) for n in gold_n),
                     mean_sd([f[ns.index(filler_n)] for f in fill])])
    show(results, ["model", *(f"gold n={n}" for n in gold_n), f"filler share n={filler_n}"], rows)


def candidate_flags(p, max_n: int = 64, kappas: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)) -> None:
    """The flags of a best-of-n experiment (this one, ``last_layer.py``, ``overoptimisation.py``):
    the test prompts, the pool size, the validation prompts and pools kappa is chosen on, the
    kappas and the seed of the draws."""
    p.add_argument("--prompts", type=int, default=64, help="held-out (test) prompts, a seeded subset; 0: all")
    p.add_argument("--max-n", type=int, default=max_n, help="largest n and pool size per test prompt; n = 1, 2, 4, ...")
    p.add_argument("--val-prompts", type=int, default=32, help="validation prompts for kappa; 0: all")
    p.add_argument("--val-pool", type=int, default=32, help="candidates per validation prompt (kappa at best-of-16)")
    p.add_argument("--kappas", type=lambda s: [float(k) for k in s.split(",")], default=list(kappas),
                   help="risk aversions tried for mean - kappa sd, comma-separated")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the candidate (and OOD text) draws")


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], models="vrm,vrm-paper,rm,rm-tuned,twin")
    candidate_flags(p, kappas=(0.0, 0.5, 1.0, 2.0))
    p.add_argument("--filler-rate", type=float, default=0.5, help="P(filler) of a fresh candidate")
    args = p.parse_args(argv)
    if args.data != "simulated-text":
        sys.exit("best-of-n needs --data simulated-text (its gold reward is the simulator's)")
    if args.max_n < 1 or args.val_pool < 1:
        sys.exit("--max-n and --val-pool must be at least 1")
    names = model_names(args)
    out, data = output_dir(args, "best_of_n"), load(args)
    pairs = data["pairs"]
    ns = [2**k for k in range(args.max_n.bit_length())]  # powers of 2 up to --max-n
    weights, prompt_texts = prompt_weights(pairs), list(dict.fromkeys(pairs["prompt"]))
    test_prompts = subset(list(dict.fromkeys(p for p, s in zip(pairs["prompt"], pairs["split"]) if s == "test")),
                          args.prompts, seed=0)
    backbone = load_backbone(BackboneConfig(backbone=args.backbone, max_length=args.max_length))
    cands = candidates(test_prompts, weights, args.max_n, args.filler_rate, args.sample_seed, backbone)

    compared = [*names, *([RISK_AVERSE] if "vrm" in names else [])]
    per_seed = {name: [] for name in compared}
    kappas = []
    for s in range(args.seeds):
        for name in names:
            _, model = curve(name, data, out / f"{name}-seed{s}", seed=s, steps=args.steps, log_every=args.log_every)
            mean, sd = scores(model, cands)
            per_seed[name].append(curves(mean, cands["gold"], cands["filler"], ns))
            if name == "vrm":
                selection = choose_kappa(args, data, weights, prompt_texts, backbone, out, s)
                kappas.append(selection)
                per_seed[RISK_AVERSE].append(curves(mean - selection["kappa"] * sd, cands["gold"], cands["filler"], ns))

    results = {"data": args.data, "n": ns, "kl_bon": [kl_bon(n) for n in ns],
               "oracle": curves(cands["gold"], cands["gold"], cands["filler"], ns)}
    for name, runs in per_seed.items():
        results[name] = {key: torch.tensor([r[key] for r in runs], dtype=torch.float64).mean(0).tolist() for key in ("gold", "filler_share")}
        results[name] |= {f"{key}_per_seed": [r[key] for r in runs] for key in ("gold", "filler_share")}
    results |= {"kappa": [k["kappa"] for k in kappas], "kappa_selection": kappas, "prompts": len(test_prompts),
                "pool": args.max_n, "filler_rate": args.filler_rate, "seeds": args.seeds, "compared": compared}
    plot(results, compared, out / "best_of_n.png")
    report(results, compared)
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
