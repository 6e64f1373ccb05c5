"""Errors a user can meet. Each message is a sentence that says what is wrong and what to do next;
the CLI prints it without a traceback."""


class SdloraError(Exception):
    """Base class for user-facing errors (bad input, bad file, bad config)."""


class AdapterFileError(SdloraError):
    """An adapter file that cannot be read, or does not fit the model."""


class ConfigError(SdloraError):
    """A configuration value that is missing, of the wrong type, or out of range."""


class ModelError(SdloraError):
    """A base model that cannot be opened (unknown family, missing component, missing tokenizer)."""
