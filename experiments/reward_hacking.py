"""The reward-hacking test bed on simulated-text: for VRM and its controls, over seeds, the
accuracy on the in-distribution test split, on the shifted split (where the planted filler marks
the loser), the hack rate (the share of test pairs whose predicted winner flips when the filler
opens the loser's response), the test log loss and ECE of P(chosen wins) with the ECE's p-value
under the model's own predictions (:func:`pyro_vrm.metrics.calibration`), and how well each
model's confidence tells its right test predictions from its wrong ones (error AUROC).

    python experiments/reward_hacking.py [--seeds 3] [--steps 1000]
                                         [--models vrm,vrm-tempered,vrm-paper,rm,rm-tuned,twin]
"""

import sys

from common import LABELS, curve, load, mean_sd, model_names, output_dir, parser, show, write_results
from pyro_vrm import FILLER, BackboneConfig, evaluate_predictions, hack_rate, load_backbone, predict, text_features

COLUMNS = ("test_accuracy", "shifted_accuracy", "hack_rate", "test_log_loss", "test_ece", "test_ece_pvalue",
           "error_auroc")


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], seeds=3, models="vrm,vrm-tempered,vrm-paper,rm,rm-tuned,twin").parse_args(argv)
    if args.data != "simulated-text":
        sys.exit("the reward-hacking test bed needs --data simulated-text (its filler is planted)")
    out, data = output_dir(args, "reward_hacking"), load(args)
    backbone = load_backbone(BackboneConfig(backbone=args.backbone, max_length=args.max_length))
    pairs = data["pairs"]
    test_pairs = pairs.select([i for i, s in enumerate(pairs["split"]) if s == "test"])
    results, rows = {"data": args.data, "models": {}}, []
    for name in model_names(args):
        finals = []
        for s in range(args.seeds):
            _, model = curve(name, data, out / f"{name}-seed{s}", seed=s, steps=args.steps, log_every=args.log_every)
            test = evaluate_predictions(predict(model, data["test"]))
            shifted = predict(model, data["shifted"]).correct.mean().item()
            hacked = hack_rate(model, test_pairs, lambda p: text_features(p, backbone, args.cache_dir)[0], FILLER)
            finals.append({"test_accuracy": test["accuracy"]["accuracy"], "shifted_accuracy": shifted,
                           "test_log_loss": test["calibration"]["log_loss"], "test_ece": test["calibration"]["ece"],
                           "test_ece_pvalue": test["calibration"]["ece_pvalue"], "error_auroc": test["error_auroc"],
                           **hacked})
        results["models"][name] = finals
        rows.append([LABELS[name], len(finals), *(mean_sd([f[k] for f in finals]) for k in COLUMNS)])
    show(results, ["model", "seeds", "test accuracy", "shifted accuracy", "hack rate", "test log loss",
                 "test ECE", "test ECE p-value", "error AUROC"], rows)
    write_results(out, results)
    return results


if __name__ == "__main__":
    main()
