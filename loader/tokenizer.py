"""get_tokenizer: open-r1's tokenizer step (chat template override included) on transformers 5."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loader.config import LoadConfig
from loader.errors import LoadConfigError, ModelLoadError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _check_template(template: str) -> None:
    import jinja2

    try:
        jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise LoadConfigError(
            f"chat_template is not a valid Jinja template: {exc.message} (line {exc.lineno})."
        ) from None


def get_tokenizer(config: LoadConfig, require_chat_template: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer; a `chat_template` in the config replaces the checkpoint's own."""
    from transformers import AutoTokenizer

    config.config_dir  # noqa: B018  (validates the path and weights before transformers reads them)
    if config.chat_template is not None:
        _check_template(config.chat_template)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            config.model_name_or_path,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            local_files_only=config.local_files_only,
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ModelLoadError(
            f"the tokenizer of {config.model_name_or_path!r} could not be loaded ({type(exc).__name__}: {exc})."
        ) from exc
    if config.chat_template is not None:
        tokenizer.chat_template = config.chat_template
    if require_chat_template and not tokenizer.chat_template:
        raise LoadConfigError(
            f"{config.model_name_or_path!r} has no chat template and chat_template is not set; "
            "pass chat_template=... (a Jinja string) to format conversations."
        )
    return tokenizer
