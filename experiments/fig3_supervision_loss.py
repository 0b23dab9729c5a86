"""Paper Fig. 3: train and eval accuracy curves of VRM for each supervision loss (kl, mse, mae,
rank), same data, split and seed, under the paper's objective (whose supervision term this is).

    python experiments/fig3_supervision_loss.py [--data simulated-text|FILE] [--steps 1000]
"""

from common import curve, final, load, mean_sd, output_dir, parser, plot_curves, show, write_results

LOSSES = ("kl", "mse", "mae", "rank")


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    out, data = output_dir(args, "fig3_supervision_loss"), load(args)
    runs = {loss: [curve("vrm-paper", data, out / f"{loss}-seed{s}", seed=s, steps=args.steps,
                         log_every=args.log_every, sup_loss=loss)[0] for s in range(args.seeds)]
            for loss in LOSSES}
    plot_curves(runs, ["accuracy", "eval_accuracy", "eval_target_corr"], out / "fig3.png",
                f"supervision loss, {args.data}")
    rows = [[loss, mean_sd([final(x, "accuracy") for x in r]), mean_sd([final(x, "eval_accuracy") for x in r]),
             mean_sd([final(x, "eval_target_corr") for x in r]) if "eval_target_corr" in r[0][-1] else "-"]
            for loss, r in runs.items()]
    results = {"data": args.data, "runs": runs}
    show(results, ["supervision loss", "final minibatch train accuracy", "final test accuracy",
                 "corr(E[w], target) on test"], rows)
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
