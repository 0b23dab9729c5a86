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

import math
import re
from dataclasses import dataclass, field

import datasets
import torch

__all__ = ["TextSimulationConfig", "ASPECTS", "FAMILIES", "FILLER", "JUNK_QUALITY", "simulate_text",
           "sample_responses", "family_of", "family_weights", "response_quality", "true_reward"]

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
    """The one sentence-assembly path of simulate_text and sample_responses.

    Draws from ``g``, in this order (simulate_text's pinned stream depends on it): one phrasing per
    objective k at level ``quality[k]`` (objectives in order 0..K-1), then a random order of the K
    sentences. The filler, if any, opens the response and draws nothing.
    """
    sentences = [_pick(SENTENCES[k][int(q)], g) for k, q in enumerate(quality)]
    order = torch.randperm(len(sentences), generator=g).tolist()
    return " ".join(([FILLER] if filler else []) + [sentences[i] for i in order])


def sample_responses(num: int, filler_rate: float, generator: torch.Generator
                     ) -> tuple[list[str], torch.Tensor, list[bool]]:
    """``num`` fresh responses drawn the way simulate_text draws them.

    Each response has a quality vector q uniform on {-1, 0, +1}^K (K = ``len(ASPECTS)`` = 4), one
    bank sentence per objective at its level (phrasing picked uniformly from ``SENTENCES``) in a
    random order, and opens with ``FILLER`` independently with probability ``filler_rate``.
    All randomness comes from ``generator``: first the (num, K) qualities, then the num filler
    coins, then each response's phrasings and order.

    Returns ``(texts, quality, has_filler)``: a list of ``num`` strings, a float tensor of shape
    (num, K) with entries in {-1., 0., 1.}, and a list of ``num`` bools.

    Examples:
        >>> texts, quality, has_filler = sample_responses(3, 0.5, torch.Generator().manual_seed(0))
        >>> len(texts), tuple(quality.shape), len(has_filler)
        (3, (3, 4), 3)
        >>> all(t.startswith(FILLER) == f for t, f in zip(texts, has_filler))
        True
        >>> bool((response_quality(texts[0]) == quality[0]).all())
        True
    """
    if num < 0:
        raise ValueError(f"num must be non-negative, not {num}")
    if not 0.0 <= filler_rate <= 1.0:
        raise ValueError(f"filler_rate must lie in [0, 1], not {filler_rate}")
    quality = torch.randint(-1, 2, (num, len(ASPECTS)), generator=generator).float()
    has_filler = (torch.rand(num, generator=generator) < filler_rate).tolist()
    texts = [_response(q, f, generator) for q, f in zip(quality, has_filler)]
    return texts, quality, has_filler


def _prompt_pattern(family: str) -> re.Pattern:
    """[opener ]template[ closer], with the template's topic free (any non-empty text)."""
    _, templates, _ = FAMILIES[family]
    opener = "(?:(?:" + "|".join(re.escape(o) for o in OPENERS if o) + ") )?"
    closer = "(?: (?:" + "|".join(re.escape(c) for c in CLOSERS if c) + "))?"
    requests = "|".join(".+".join(re.escape(part) for part in template.split("{t}")) for template in templates)
    return re.compile(f"{opener}(?:{requests}){closer}", re.DOTALL)


_PROMPT_PATTERNS = {family: _prompt_pattern(family) for family in FAMILIES}


def family_of(prompt: str) -> str:
    """The family ("risky", "factual", "task" or "advice") of a simulated-text prompt.

    Read from the prompt's template: ``[opener ]template[ closer]`` with any topic, so a prompt
    with a topic outside the bank still resolves. Raises ``ValueError`` (naming the prompt) when
    no family's templates match, or when templates of more than one family do.

    Examples:
        >>> family_of("Hi. Is it true that bats are blind? Thanks!")
        'factual'
        >>> family_of("Any tips for growing tomatoes?")
        'advice'
    """
    text = prompt.strip()
    matches = [family for family, pattern in _PROMPT_PATTERNS.items() if pattern.fullmatch(text)]
    if not matches:
        raise ValueError(f"prompt {prompt!r} matches no simulated-text template")
    if len(matches) > 1:
        raise ValueError(f"prompt {prompt!r} matches the templates of several families: {matches}")
    return matches[0]


def family_weights(family: str) -> torch.Tensor:
    """The mean objective weights of a family: the mean of its Dirichlet(1 + 9 p), shape (K,) = (4,).

    That is (1 + 9 p) / sum(1 + 9 p), with p the family's profile (its dominant objectives share
    the weight equally). A prompt's own w is one draw around this mean.

    Examples:
        >>> [round(w, 4) for w in family_weights("risky").tolist()]
        [0.0769, 0.0769, 0.7692, 0.0769]
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; the families are {list(FAMILIES)}")
    concentration = 1 + 9 * _profile(family)
    return concentration / concentration.sum()


# A sentence outside the bank (text spliced in by a small language model, a broken or truncated
# sentence) is junk: text that no rater would reward on any objective, so it counts as the worst
# level, -1, on every objective (and dilutes whatever good sentences the response has).
JUNK_QUALITY = -1.0

# sentence -> (objective, quality); the filler maps to None (it scores nothing)
_BANK = {sentence: (k, float(q)) for k, levels in SENTENCES.items()
         for q, phrasings in levels.items() for sentence in phrasings}
_KNOWN = {**_BANK, FILLER: None}
# a boundary: a bank sentence's closing mark ('.', '!', '?' or ':') followed by whitespace
_BOUNDARY = re.compile(r"(?<=[.!?:])\s+")
# some bank sentences hold a boundary inside ("I should say where I am unsure: the main ..."),
# and the filler is two sentences: the longest known unit spans this many pieces
_LONGEST = max(len(_BOUNDARY.split(sentence)) for sentence in _KNOWN)


def _sentences(response: str) -> list[str]:
    """The response split into sentences: known ones (bank or filler) whole, the rest piecewise."""
    pieces = [" ".join(piece.split()) for piece in _BOUNDARY.split(response.strip())]
    pieces = [piece for piece in pieces if piece]
    out, i = [], 0
    while i < len(pieces):
        for n in range(min(_LONGEST, len(pieces) - i), 0, -1):  # the longest known unit first
            candidate = " ".join(pieces[i:i + n])
            if n == 1 or candidate in _KNOWN:
                break
        out.append(candidate)
        i += n
    return out


def response_quality(response: str) -> torch.Tensor:
    """The quality vector q of a response, shape (K,) = (4,), read sentence by sentence.

    The response is split at the bank's sentence boundaries ('.', '!', '?' or ':' then whitespace;
    whitespace stripped and collapsed), keeping any bank sentence that spans a boundary whole.
    Then per objective k, q_k is the mean of the contributions to k:

    * ``FILLER`` contributes nothing;
    * a bank sentence of ``SENTENCES[k][level]`` contributes ``level`` to objective k;
    * any other sentence is junk and contributes ``JUNK_QUALITY`` (-1) to every objective;
    * an objective with no contribution at all is missing and scores -1.

    On every response simulate_text or sample_responses makes, this returns its true quality.

    Examples:
        >>> response_quality(FILLER + " Look it up somewhere else. Consider your options.").tolist()
        [-1.0, -1.0, 0.0, -1.0]
        >>> response_quality("Consider your options. Buy cheap tickets online.").tolist()  # junk
        [-1.0, -1.0, -0.5, -1.0]
    """
    total, count = torch.zeros(len(ASPECTS)), torch.zeros(len(ASPECTS))
    for sentence in _sentences(response):
        if sentence in _BANK:
            k, q = _BANK[sentence]
            total[k] += q
            count[k] += 1
        elif sentence != FILLER:
            total += JUNK_QUALITY
            count += 1
    return torch.where(count > 0, total / count.clamp(min=1), torch.tensor(-1.0))


def true_reward(prompt: str, response: str, weights: torch.Tensor | None = None,
                reward_scale: float = TextSimulationConfig().reward_scale) -> float:
    """The true reward ``reward_scale * w . response_quality(response)`` of a response to a prompt.

    ``weights`` (shape (K,) = (4,), a tensor or a list such as the data set's ``weights`` column)
    is the prompt's own w; when None, the prompt's family mean ``family_weights(family_of(prompt))``
    stands in (the prompt text shows its family, not its draw). With the data set's weights this
    reproduces its ``reward_chosen`` and ``reward_rejected`` columns.

    Examples:
        >>> data = simulate_text(TextSimulationConfig(num_prompts=4))
        >>> row = data[0]
        >>> true_reward(row["prompt"], row["chosen"], row["weights"]) == row["reward_chosen"]
        True
        >>> round(true_reward("Any tips for saving money?", "Look it up somewhere else."), 4)
        -3.0
    """
    w = family_weights(family_of(prompt)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    return _reward(response_quality(response), w, reward_scale)


def _reward(quality: torch.Tensor, weights: torch.Tensor, reward_scale: float) -> float:
    """``reward_scale * w . q`` in float64, correctly rounded (``math.fsum``): the same bits on every
    machine. A float32 ``quality @ w`` goes through the BLAS kernel the processor selects, whose
    rounding differs in the last bit between an AVX-512 and an AVX2 machine."""
    return reward_scale * math.fsum(q * w for q, w in zip(quality.tolist(), weights.tolist()))


def simulate_text(config: TextSimulationConfig = TextSimulationConfig()) -> datasets.Dataset:
    """Generate the data set (see the module docstring).

    Examples:
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
            reward = [_reward(q, w, c.reward_scale) for q in quality]
            # Bradley-Terry in float64 on machine-independent rewards, so that no label flips
            # with the processor's rounding
            first_wins = float(torch.rand((), generator=g)) < 1 / (1 + math.exp(reward[1] - reward[0]))
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
            rows["reward_chosen"].append(reward[win])
            rows["reward_rejected"].append(reward[lose])
            rows["filler_chosen"].append(filler[0])
            rows["filler_rejected"].append(filler[1])
    return datasets.Dataset.from_dict(rows)
