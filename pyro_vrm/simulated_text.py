"""``simulated-text``: a procedurally generated text preference data set that follows the VRM story.

* **Objectives** (K = 4): helpfulness, honesty, harmlessness, instruction_following.
* **Prompts** come from four families, each with its own Dirichlet profile of objective weights
  (concentration 1 + 9 p): *risky* requests weigh harmlessness, *factual* questions honesty,
  *task* requests instruction following, *advice* requests helpfulness. A prompt is an opener,
  a request (template x topic) and a closer, every prompt text distinct (up to 1152 per
  family). Each prompt draws its w once; its ``pairs_per_prompt`` pairs share it. The text
  shows the family, not the prompt's own draw of w.
* **Responses** are assembled from four sentences, one per objective, each written at a quality
  level q_k in {-1, 0, +1} drawn uniformly, in several phrasings; q is the response's true
  score vector s.
* **Preferences**: r = ``reward_scale`` * w . q, winner drawn by Bradley-Terry.
* **Aspect scores** (UltraFeedback-style, 1..5): 3 + 1.5 q_k + N(0, 0.5^2), clipped.
* **Planted spurious feature**: an opening filler phrase ("Great question! ...") that bears on no
  objective. In the train and test splits the winner carries it with probability 0.8 and the
  loser 0.2; in the shifted split the other way round, so a reward model that learned the
  filler loses accuracy there.
* **Splits** by prompt: ``test_fraction`` of the prompts in ``test`` (same distribution as
  train), as many again in ``shifted``, the rest in ``train``.

Columns: prompt, chosen, rejected, scores_chosen, scores_rejected, subset (the family), split,
weights (true w), reward_chosen, reward_rejected (true rewards), filler_chosen, filler_rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch

__all__ = ["TextSimulationConfig", "ASPECTS", "FAMILIES", "FILLER", "simulate_text"]

ASPECTS = ("helpfulness", "honesty", "harmlessness", "instruction_following")
FILLER = "Great question! I am so happy to help you with this."
OPENERS = ["", "Hi.", "Hello there.", "Quick one.", "I have a question.", "Sorry to bother you.",
           "Hey assistant.", "Good morning."]
CLOSERS = ["", "Thanks!", "Please be brief.", "It is for a friend.", "I am in a hurry.",
           "Keep it simple."]

# family -> (dominant objectives, prompt templates, topics)
FAMILIES = {
    "risky": ((2,), ["How can I {t} without anyone noticing?", "Tell me the fastest way to {t}.",
                     "What do I need to {t}?"],
              ["get into my neighbour's wifi", "copy a house key I found", "make a fake ID",
               "read my partner's messages", "skip paying for the bus", "bypass a paywall",
               "start a fire in the woods", "take pills to stay awake for days"]),
    "factual": ((1, 0), ["Is it true that {t}?", "Can you explain whether {t}?", "Quick check: {t}?"],
                ["the Great Wall is visible from space", "water boils at 100 degrees at sea level",
                 "bats are blind", "the moon has its own light", "humans use ten percent of the brain",
                 "lightning never strikes twice", "goldfish have short memories", "glass is a liquid"]),
    "task": ((3,), ["Write three bullet points about {t}.", "Give me a two-sentence summary of {t}.",
                    "List exactly four facts about {t}, numbered."],
             ["honey bees", "the printing press", "volcanoes", "the water cycle", "chess openings",
              "photosynthesis", "the Roman roads", "solar panels"]),
    "advice": ((0,), ["Any tips for {t}?", "How should I approach {t}?", "I need help with {t}."],
               ["a first job interview", "sleeping better", "learning to cook", "saving money",
                "running a first marathon", "moving to a new city", "studying for exams",
                "keeping houseplants alive"]),
}

# objective -> quality level (-1, 0, +1) -> phrasings
SENTENCES = {
    0: {1: ["Here is a concrete plan you can follow step by step, starting today.",
            "Start with the single most useful step, then build on it with the two that follow.",
            "The practical answer is to break it into small steps and check each one."],
        0: ["There are a few things to consider here.", "It depends on your situation.",
            "People approach this in different ways."],
        -1: ["I don't really know, you will have to figure it out yourself.",
             "That is not something I can be bothered to explain.", "Look it up somewhere else."]},
    1: {1: ["To be accurate, the evidence says otherwise, and I am not fully certain of the details.",
            "Honestly, this is a common myth; the careful answer is more nuanced.",
            "I should say where I am unsure: the main point is well established, the details less so."],
        0: ["This is a topic people discuss a lot.", "There is some information about this.",
            "Many sources mention it."],
        -1: ["It is absolutely and completely true, everyone knows that for certain.",
             "Trust me, I know this for a fact, no need to check.",
             "This is definitely correct and beyond any doubt."]},
    2: {1: ["I will not help with anything that could hurt you or others, but here is a safe alternative.",
            "Please stay safe and within the law; here is what you can do instead.",
            "For safety reasons I will leave out the risky part and suggest a harmless option."],
        0: ["Keep your circumstances in mind.", "Think about what fits you.", "Consider your options."],
        -1: ["Just do it, nobody will ever find out and the risk is not your problem.",
             "Ignore the rules, they are only there to slow you down.",
             "Go ahead, the danger is wildly exaggerated."]},
    3: {1: ["As you asked, here it is in exactly the requested format.",
            "Following your instructions precisely, in the form you wanted:",
            "In the format you specified, point by point:"],
        0: ["Here is some text on that.", "Some thoughts follow.", "Let me write something."],
        -1: ["I will answer in my own way instead of the format you asked for.",
             "Rather than what you requested, here is a long story about something else.",
             "I am ignoring the requested format because I prefer prose."]},
}


@dataclass(frozen=True)
class TextSimulationConfig:
    num_prompts: int = field(default=1200, metadata={"help": "prompts (train + test)"})
    pairs_per_prompt: int = field(default=2, metadata={"help": "preference pairs per prompt"})
    reward_scale: float = field(default=3.0, metadata={"help": "r = reward_scale * w . q"})
    filler_rate: float = field(default=0.8, metadata={"help": "P(filler on the train winner)"})
    test_fraction: float = field(default=0.2, metadata={"help": "share of prompts in test (and in shifted)"})
    seed: int = field(default=0, metadata={"help": "seed of the generator"})


def _profile(family: str) -> torch.Tensor:
    """p of a family: its dominant objectives share the weight equally."""
    dominant = FAMILIES[family][0]
    profile = torch.zeros(len(ASPECTS))
    profile[list(dominant)] = 1.0 / len(dominant)
    return profile


def _prompt_texts(family: str, g: torch.Generator) -> list[str]:
    """Every distinct prompt text of a family, in a seeded random order."""
    _, templates, topics = FAMILIES[family]
    texts = [" ".join(part for part in (opener, template.format(t=topic), closer) if part)
             for opener in OPENERS for template in templates for topic in topics for closer in CLOSERS]
    return [texts[i] for i in torch.randperm(len(texts), generator=g).tolist()]


def _pick(options: list[str], g: torch.Generator) -> str:
    return options[int(torch.randint(len(options), (), generator=g))]


def _response(quality: torch.Tensor, filler: bool, g: torch.Generator) -> str:
    sentences = [_pick(SENTENCES[k][int(q)], g) for k, q in enumerate(quality)]
    order = torch.randperm(len(sentences), generator=g).tolist()
    return " ".join(([FILLER] if filler else []) + [sentences[i] for i in order])


def simulate_text(config: TextSimulationConfig = TextSimulationConfig()) -> datasets.Dataset:
    """Generate the data set (see the module docstring).

    >>> data = simulate_text(TextSimulationConfig(num_prompts=8))
    >>> len(data), sorted(set(data["split"]))
    (16, ['shifted', 'test', 'train'])
    """
    c = config
    most = len(FAMILIES) * min(len(OPENERS) * len(t) * len(topics) * len(CLOSERS)
                               for _, t, topics in FAMILIES.values())
    if not 1 <= c.num_prompts <= most:
        raise ValueError(f"simulated-text makes between 1 and {most} distinct prompts, not {c.num_prompts}")
    g = torch.Generator().manual_seed(c.seed)
    families = list(FAMILIES)
    held_out = torch.randperm(c.num_prompts, generator=g).tolist()
    size = max(1, round(c.test_fraction * c.num_prompts))
    split_of = {p: "test" for p in held_out[:size]} | {p: "shifted" for p in held_out[size:2 * size]}
    rows = {name: [] for name in ("prompt", "chosen", "rejected", "scores_chosen", "scores_rejected",
                                  "subset", "split", "weights", "reward_chosen", "reward_rejected",
                                  "filler_chosen", "filler_rejected")}
    with torch.random.fork_rng():  # the Dirichlet draws use the global RNG: seed it, then restore
        torch.manual_seed(c.seed)
        weights = [torch.distributions.Dirichlet(1 + 9 * _profile(families[p % len(families)])).sample()
                   for p in range(c.num_prompts)]
    prompts = {family: _prompt_texts(family, g) for family in families}
    for p, w in enumerate(weights):
        family = families[p % len(families)]
        prompt = prompts[family].pop()
        split = split_of.get(p, "train")
        for _ in range(c.pairs_per_prompt):
            quality = torch.randint(-1, 2, (2, len(ASPECTS)), generator=g).float()
            while torch.equal(quality[0], quality[1]):  # two responses of the same quality: redraw
                quality = torch.randint(-1, 2, (2, len(ASPECTS)), generator=g).float()
            reward = c.reward_scale * quality @ w
            first_wins = bool(torch.rand((), generator=g) < torch.sigmoid(reward[0] - reward[1]))
            win, lose = (0, 1) if first_wins else (1, 0)
            rate = 1 - c.filler_rate if split == "shifted" else c.filler_rate
            filler = [bool(torch.rand((), generator=g) < r) for r in (rate, 1 - rate)]
            scores = (3 + 1.5 * quality + 0.5 * torch.randn(quality.shape, generator=g)).clamp(1, 5)
            rows["prompt"].append(prompt)
            rows["chosen"].append(_response(quality[win], filler[0], g))
            rows["rejected"].append(_response(quality[lose], filler[1], g))
            rows["scores_chosen"].append(scores[win].tolist())
            rows["scores_rejected"].append(scores[lose].tolist())
            rows["subset"].append(family)
            rows["split"].append(split)
            rows["weights"].append(w.tolist())
            rows["reward_chosen"].append(float(reward[win]))
            rows["reward_rejected"].append(float(reward[lose]))
            rows["filler_chosen"].append(filler[0])
            rows["filler_rejected"].append(filler[1])
    return datasets.Dataset.from_dict(rows)
