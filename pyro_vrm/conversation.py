r"""One rendering of a conversation as text, for the loaders and for scoring alike.

A prompt that is a conversation (a list of ``{"role", "content"}`` messages, as TRL and most chat
data sets write it) is rendered as an Anthropic HH-RLHF transcript: every turn, roles kept, then
the turn the response answers::

    "\n\nHuman: <user>\n\nAssistant: <assistant>\n\nHuman: <user>\n\nAssistant:"

(roles: system -> ``System``, user -> ``Human``, assistant -> ``Assistant``). HH-RLHF rows are
already in this form, so a message list and the HH transcript of the same dialogue give the same
text, hence the same features. A response given as messages is the content of its one assistant
message. The rendering depends on no backbone, so a fit's features, cache and scores do not
either.

A reward model renders what it is asked to score as its training did: a run records whether its
training prompts were conversations (:func:`prompt_form`). One trained on plain-text prompts
scores a conversation of a single user message as that message's text, which is how such a
prompt reached it; any longer conversation is refused, since it saw none.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RENDERING", "ROLES", "ASSISTANT_TURN", "PROMPT_FORMS", "is_conversation", "render_prompt",
           "render_response", "prompt_form", "prompt_text", "response_text"]

RENDERING = "hh-transcript"
"""The name under which a run records this rendering."""
ROLES = {"system": "System", "user": "Human", "assistant": "Assistant"}
ASSISTANT_TURN = "\n\nAssistant:"
PROMPT_FORMS = ("text", "conversation")


def is_conversation(value: Any) -> bool:
    """Whether ``value`` has the shape of a message list (a non-empty list of dicts)."""
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _kind(value: Any) -> str:
    """What a value that is no message list is, for an error."""
    if isinstance(value, list):
        return "an empty list" if not value else "a list of " + ", ".join(sorted({type(m).__name__ for m in value}))
    return type(value).__name__


def _turns(messages: list[dict], where: str) -> list[tuple[str, str]]:
    turns = []
    for j, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}[{j}].role is {role!r}; a message's role is one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}[{j}].content must be a string, got {type(content).__name__}")
        turns.append((role, content))
    return turns


def render_prompt(messages: list[dict], where: str = "prompt") -> str:
    r"""The conversation before a response, as the HH transcript that ends in the assistant's turn.

    ``where`` names the value in an error (a bad role, a content that is not a string).

    Examples:
        >>> render_prompt([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
        ...                {"role": "user", "content": "Tell me a joke."}])
        '\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant:'
    """
    if not is_conversation(messages):
        raise ValueError(f"{where} must be a non-empty list of messages, got {_kind(messages)}")
    turns = _turns(messages, where)
    if turns[-1][0] == "assistant":
        raise ValueError(f"{where}[-1] is an assistant message: a prompt ends before the response it asks for")
    return "".join(f"\n\n{ROLES[role]}: {content}" for role, content in turns) + ASSISTANT_TURN


def render_response(messages: list[dict], where: str = "response") -> str:
    """A response given as messages: the content of its one assistant message.

    Examples:
        >>> render_response([{"role": "assistant", "content": "Sure."}])
        'Sure.'
    """
    if not is_conversation(messages):
        raise ValueError(f"{where} must be a non-empty list of messages, got {_kind(messages)}")
    turns = _turns(messages, where)
    if len(turns) != 1 or turns[0][0] != "assistant":
        raise ValueError(f"{where} must be one assistant message, got the roles {[role for role, _ in turns]}")
    return turns[0][1]


def prompt_form(prompts: list[str]) -> str:
    r"""``conversation`` when the training prompts are rendered conversations (HH transcripts), else
    ``text``: what a run records, so that its reward model renders as it was trained.

    Examples:
        >>> prompt_form(["\n\nHuman: Hi\n\nAssistant:"]), prompt_form(["Any tips for sleeping better?"])
        ('conversation', 'text')
    """
    rendered = [p.startswith("\n\n") and p.endswith(ASSISTANT_TURN) for p in prompts]
    return "conversation" if rendered and sum(rendered) * 2 > len(rendered) else "text"


def prompt_text(value: Any, form: str, where: str) -> str:
    """A prompt to score, a string or messages, as text rendered the way a run of ``form`` saw it;
    ``where`` names it in an error (``prompts[3]``)."""
    if isinstance(value, str):
        return value
    if not is_conversation(value):
        raise TypeError(f"{where} must be a string or a list of {{'role', 'content'}} messages, "
                        f"got {_kind(value)}")
    if form == "conversation":
        return render_prompt(value, where)
    turns = _turns(value, where)
    if [role for role, _ in turns] != ["user"]:
        raise ValueError(f"{where} is a conversation of the roles {[role for role, _ in turns]}, but this "
                         "reward model was trained on plain-text prompts: only a single user message has the "
                         "form it saw (train on conversations to score them)")
    return turns[0][1]


def response_text(value: Any, where: str) -> str:
    """A response to score, a string or one assistant message, as text."""
    if isinstance(value, str):
        return value
    if not is_conversation(value):
        raise TypeError(f"{where} must be a string or a list with one assistant message, got {_kind(value)}")
    return render_response(value, where)
