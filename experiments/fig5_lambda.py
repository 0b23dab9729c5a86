"""Paper Fig. 5: lambda in {0, 0.01, 0.1, 1}: train accuracy, eval accuracy and the KL term
(KL_w + KL_z per pair) over training steps, under the paper's objective.

    python experiments/fig5_lambda.py [--data simulated-text|FILE] [--steps 1000]
"""

from common import curve, final, load, mean_sd, output_dir, parser, plot_curves, show, write_results

LAMBDAS = (0.0, 0.01, 0.1, 1.0)


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out, data = output_dir(args, "fig5_lambda"), load(args)
    runs = {}
    for lam in LAMBDAS:
        runs[f"lambda={lam}"] = [curve("vrm-paper", data, out / f"lambda{lam}-seed{s}", seed=s, steps=args.steps,
                                       log_every=args.log_every, lambda_sup=lam)[0] for s in range(args.seeds)]
        for records in runs[f"lambda={lam}"]:
            for r in records:
                r["kl"] = r["kl_w"] + r["kl_z"]
    plot_curves(runs, ["accuracy", "eval_accuracy", "kl"], out / "fig5.png", f"lambda, {args.data}")
    rows = [[name, mean_sd([final(x, "accuracy") for x in r]), mean_sd([final(x, "eval_accuracy") for x in r]),
             f"{final(r[0], 'kl'):.2e}"] for name, r in runs.items()]
    results = {"data": args.data, "runs": runs}
    show(results, ["lambda", "final minibatch train accuracy", "final test accuracy", "final KL per pair"], rows)
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
