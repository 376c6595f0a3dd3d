"""The names of the mask generators and encoder precisions, checked without importing PyTorch.

The settings module checks ``NEPHROWEB_MASK_GENERATOR`` and ``NEPHROWEB_ENCODER_DTYPE``
at start-up with ``check_generator_options``, so a typo stops the server and every
command at once instead of failing the first proposal run.
"""

from ml.errors import SettingsError

MASK_GENERATORS = ("fast", "reference")
ENCODER_DTYPES = ("float32", "bfloat16")


def check_generator_options(mask_generator: str, encoder_dtype: str) -> None:
    """Raise SettingsError unless the generator name and encoder dtype are supported."""
    if mask_generator not in MASK_GENERATORS:
        raise SettingsError(
            f"mask_generator is {mask_generator!r}, expected one of {list(MASK_GENERATORS)}."
        )
    if encoder_dtype not in ENCODER_DTYPES:
        raise SettingsError(
            f"encoder_dtype is {encoder_dtype!r}, expected one of {list(ENCODER_DTYPES)}."
        )
    if mask_generator == "reference" and encoder_dtype != "float32":
        raise SettingsError(
            f"encoder_dtype {encoder_dtype!r} needs mask_generator 'fast'. The reference "
            "generator runs Meta's code unchanged in float32."
        )
