"""Paper Sec. 6.7: the supervision of w ablated (lambda = 0) against the paper's lambda, under
the paper's objective: test accuracy, and interpretability, i.e. how well E[w] tracks the
aspect-score target on the test pairs (and, on simulated-text, the true w).

    python experiments/ablation.py [--data simulated-text|FILE] [--seeds 3]
"""

from common import curve, load, mean_sd, output_dir, parser, show, write_results
from pyro_vrm import PRESETS, pearson, weight_means

PAPER_LAMBDA = PRESETS["paper"]["lambda_sup"]


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], seeds=3).parse_args(argv)
    out, data = output_dir(args, "ablation"), load(args)
    settings = {"lambda 0": 0.0, f"lambda {PAPER_LAMBDA} (the paper's)": PAPER_LAMBDA}
    results, rows = {"data": args.data, "settings": {}}, []
    for label, lam in settings.items():
        finals = []
        for s in range(args.seeds):
            records, vrm = curve("vrm-paper", data, out / f"lambda{lam}-seed{s}", seed=s, steps=args.steps,
                                 log_every=args.log_every, lambda_sup=lam)
            row = {"test_accuracy": records[-1]["eval_accuracy"], "target_corr": records[-1].get("eval_target_corr")}
            if data["truth"] is not None:
                row["w_recovery"] = pearson(weight_means(vrm, data["test"]), data["truth"]["test"]["objective_weights"])
            finals.append(row)
        results["settings"][label] = finals
        cell = lambda k: mean_sd([f[k] for f in finals]) if finals[0].get(k) is not None else "-"  # noqa: E731
        rows.append([label, len(finals), cell("test_accuracy"), cell("target_corr"), cell("w_recovery")])
    show(results, ["setting", "seeds", "test accuracy", "corr(E[w], aspect target)", "corr(E[w], true w)"], rows)
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
