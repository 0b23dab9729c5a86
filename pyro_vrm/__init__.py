"""Variational Reward Modeling as a Pyro probabilistic program."""
