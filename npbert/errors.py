"""One exception family. Every message names the file, tensor or argument at fault and says what to do."""


class NpbertError(Exception):
    """Base class of every error npbert raises on purpose."""


class ConfigError(NpbertError):
    """config.json (or a recipe / option) is missing, malformed or inconsistent."""


class WeightsError(NpbertError):
    """A checkpoint file is missing, truncated, lies in its header, or does not match the config."""


class UnsupportedModelError(NpbertError):
    """The checkpoint's architecture or an option of it is not implemented."""


class TokenizerError(NpbertError):
    """tokenizer.json is missing or unusable."""


class InputError(NpbertError):
    """Bad user input at run time: empty text, wrong shapes, NaN activations, ..."""


class QuantError(NpbertError):
    """Bad quantization request: bits out of range, unknown recipe / site / estimator, overflow risk."""


class CalibrationError(NpbertError):
    """Calibration data missing, empty, or too small for what the recipe needs."""


class DataError(NpbertError):
    """An evaluation data file is missing or malformed (the file and line are named)."""


class NpbertWarning(UserWarning):
    """Something was changed to make input fit (e.g. truncation); the message says what."""
