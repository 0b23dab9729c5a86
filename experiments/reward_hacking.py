"""The reward-hacking test bed on simulated-text: for VRM and the RM, over seeds, the accuracy on
the in-distribution test split, on the shifted split (where the planted filler marks the loser),
and the hack rate (the share of test pairs whose predicted winner flips when the filler opens
the loser's response).

    python experiments/reward_hacking.py [--seeds 3] [--steps 1000]
"""

import sys

from common import curve, load, mean_sd, output_dir, parser, table, write_results
from pyro_vrm.backbone import Backbone
from pyro_vrm.evaluate import hack_rate, predict
from pyro_vrm.featurize import featurize
from pyro_vrm.simulated_text import FILLER


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], seeds=3).parse_args(argv)
    if args.data != "simulated-text":
        sys.exit("the reward-hacking test bed needs --data simulated-text (its filler is planted)")
    out, data = output_dir(args, "reward_hacking"), load(args)
    backbone = Backbone.from_pretrained(args.backbone, args.max_length)
    pairs = data["pairs"]
    test_pairs = pairs.select([i for i, s in enumerate(pairs["split"]) if s == "test"])
    results, rows = {"data": args.data, "models": {}}, []
    for kind in ("vrm", "rm"):
        finals = []
        for s in range(args.seeds):
            records, model = curve(kind, data, out / f"{kind}-seed{s}", seed=s, steps=args.steps,
                                   log_every=args.log_every)
            shifted = predict(model, data["shifted"]).correct.mean().item()
            hacked = hack_rate(model, test_pairs, lambda p: featurize(p, backbone, args.cache_dir).features, FILLER)
            finals.append({"test_accuracy": records[-1]["eval_accuracy"], "shifted_accuracy": shifted, **hacked})
        results["models"][kind] = finals
        rows.append([kind.upper(), len(finals), *(mean_sd([f[k] for f in finals])
                                                   for k in ("test_accuracy", "shifted_accuracy", "hack_rate"))])
    print(table(["model", "seeds", "test accuracy", "shifted accuracy", "hack rate"], rows))
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
