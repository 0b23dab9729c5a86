"""Variational Reward Modeling as a Pyro probabilistic program.

What a user imports is named in ``__all__`` and reachable as ``pyro_vrm.NAME``; each name is
loaded from its module on first use, so that ``import pyro_vrm.data`` stays light. The model
function itself is ``pyro_vrm.model.model`` (the module of the generative story bears its name).

Parameters belong to their modules: importing the package sets Pyro's
``module_local_params``, so two fits in one process never share a parameter through Pyro's
global param store.
"""

from importlib import import_module

import pyro

pyro.settings.set(module_local_params=True)

# name -> module it lives in, in the order of the data flow
_PUBLIC = {
    # data
    "load_preferences": "data", "DataError": "data", "LoadReport": "data",
    "simulate": "simulation", "SimulationConfig": "simulation",
    "simulate_text": "simulated_text", "TextSimulationConfig": "simulated_text", "FILLER": "simulated_text",
    "sample_responses": "simulated_text", "true_reward": "simulated_text",
    # features
    "Backbone": "backbone", "resolve_backbone": "backbone", "PreferenceFeatures": "features",
    "PairBatch": "features", "validation_split": "features", "validation_folds": "features",
    "split_by_prompt": "features",
    "TextPairs": "finetune", "add_lora": "finetune", "trainable_parameters": "finetune",
    "load_text_pairs": "pipeline", "load_backbone": "pipeline", "text_features": "pipeline",
    "load_text_features": "pipeline", "split_text": "pipeline",
    # model and guide
    "Priors": "model", "ConditionalPrior": "model", "AmortizedGuide": "guide", "PairGuide": "guide", "VRM": "vrm",
    "RewardHead": "baseline", "DeterministicTwin": "twin",
    # fit
    "ModelConfig": "config", "TrainConfig": "config", "BackboneConfig": "config", "preset": "config",
    "PRESETS": "config", "fit_vrm": "train", "fit_reward_model": "train", "fit_tuned_reward_model": "train",
    "fit_temperature_scaled_reward_model": "train", "select_on_validation": "train",
    "fit_twin": "train", "supervision_setup": "train", "resolve_model_config": "train", "RunDir": "runs", "load_fit": "fits", "load_vrm": "vrm",
    "VRMObjective": "objective", "VRMLoss": "objective", "KLWeight": "objective", "make_elbo": "objective",
    "minibatches": "loop", "Standardizer": "supervision", "supervision_loss": "supervision",
    # judge
    "reward_posterior": "posterior", "pair_posterior": "posterior", "kl_terms": "posterior",
    "expected_log_likelihood": "posterior", "summarize": "evaluate", "predict": "evaluate", "evaluate_predictions": "evaluate", "hack_rate": "evaluate",
    "pearson": "evaluate", "weight_means": "evaluate", "pairwise_accuracy": "metrics",
    "simulation_based_calibration": "sbc", "simulate_from_fit": "sbc",
    "supervision_target": "supervision", "full_data_elbo": "bounds", "pac_bayes_bound": "bounds",
    # reward
    "Ensemble": "ensemble", "WorstCase": "ensemble", "reward_mean_sd": "ensemble", "ood_aurocs": "ood", "BayesianLastLayer": "last_layer",
    "RewardModel": "reward_model", "VRMRewardModel": "reward_model", "PPOConfig": "ppo", "PPOTrainer": "ppo",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'pyro_vrm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
