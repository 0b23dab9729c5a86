"""Paper Fig. 4: accuracy curves of VRM and the Bradley-Terry RM over training steps, same data,
split, minibatches and seeds; mean and min-max band over seeds.

    python experiments/fig4_vrm_vs_rm.py [--data simulated-text|hh|FILE] [--seeds 3] [--steps 1000]
"""

from common import curve, final, load, mean_sd, output_dir, parser, plot_curves, table, write_results


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], seeds=3).parse_args(argv)
    out, data = output_dir(args, "fig4_vrm_vs_rm"), load(args)
    runs = {kind: [curve(kind, data, out / f"{kind}-seed{s}", seed=s, steps=args.steps, log_every=args.log_every)[0]
                   for s in range(args.seeds)] for kind in ("vrm", "rm")}
    plot_curves({k.upper(): v for k, v in runs.items()}, ["accuracy", "eval_accuracy"], out / "fig4.png",
                f"VRM vs RM on {args.data}")
    rows = [[kind.upper(), len(r), mean_sd([final(x, "accuracy") for x in r]),
             mean_sd([final(x, "eval_accuracy") for x in r])] for kind, r in runs.items()]
    print(table(["model", "seeds", "final minibatch train accuracy", "final test accuracy"], rows))
    results = {"data": args.data, "runs": runs}
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
