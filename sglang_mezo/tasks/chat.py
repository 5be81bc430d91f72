"""Chat templates: wrap each prompt as one user turn with the tokenizer's own chat template and its
generation prompt, so an Instruct model sees the format it was tuned on. The label words / answers are
appended after the assistant's turn begins, exactly as without the template."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .spec import Example, TaskError


def chat_prompt(prompt: str, tokenizer) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise TaskError(f"--chat-template: the tokenizer of this model ({type(tokenizer).__name__}) "
                        "has no chat template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    # The template may spell out BOS; the prompt is later encoded with special tokens, so drop it here
    # when the tokenizer adds BOS itself (else the model would see it twice).
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def apply_chat_template(examples: Sequence[Example], tokenizer) -> list[Example]:
    """The same examples with each prompt wrapped as a user turn (candidates unchanged)."""
    return [replace(ex, prompt=chat_prompt(ex.prompt, tokenizer)) for ex in examples]
