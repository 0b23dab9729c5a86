"""Paper Fig. 4: accuracy curves of VRM and its controls (the Bradley-Terry RM, tuned or not, and
the deterministic twin) over training steps, same data, split, minibatches and seeds; mean and
min-max band over seeds.

    python experiments/fig4_vrm_vs_rm.py [--data simulated-text|hh|uf|FILE] [--seeds 3] [--steps 1000] [--models ...]
"""

from common import LABELS, curve, final, load, mean_sd, model_names, output_dir, parser, plot_curves, show, write_results


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], seeds=3, models="vrm,vrm-paper,rm,rm-tuned,twin").parse_args(argv)
    out, data = output_dir(args, "fig4_vrm_vs_rm"), load(args)
    runs = {name: [curve(name, data, out / f"{name}-seed{s}", seed=s, steps=args.steps, log_every=args.log_every)[0]
                   for s in range(args.seeds)] for name in model_names(args)}
    plot_curves({LABELS[k]: v for k, v in runs.items()}, ["accuracy", "eval_accuracy"], out / "fig4.png",
                f"VRM and its controls on {args.data}")
    rows = [[LABELS[name], len(r), mean_sd([final(x, "accuracy") for x in r]),
             mean_sd([final(x, "eval_accuracy") for x in r])] for name, r in runs.items()]
    results = {"data": args.data, "runs": runs}
    show(results, ["model", "seeds", "final minibatch train accuracy", "final test accuracy"], rows)
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
