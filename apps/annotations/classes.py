"""The configured instance classes (NEPHROWEB_CLASSES): names, colours, keys."""

from dataclasses import dataclass

from django.conf import settings

from ml.errors import NephrowebError


@dataclass(frozen=True)
class InstanceClass:
    name: str
    color_hex: str
    key: str
    trainable: bool

    @property
    def color_rgb(self) -> tuple[int, int, int]:
        value = self.color_hex.lstrip("#")
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


# An area class outlines a tissue compartment, not an object: IFTA's denominator. It is
# never trained on or scored, and a proposal inside it is not a duplicate of it.
CORTEX_CLASS = "cortex"


class UnknownClassError(NephrowebError, ValueError):
    """A class name that is not in NEPHROWEB_CLASSES."""


def configured_classes() -> list[InstanceClass]:
    return [
        InstanceClass(c["name"], c["color"], str(c.get("key", "")), bool(c.get("trainable", True)))
        for c in settings.NEPHROWEB_CLASSES
    ]


def class_by_name(name: str) -> InstanceClass:
    for instance_class in configured_classes():
        if instance_class.name == name:
            return instance_class
    known = ", ".join(c.name for c in configured_classes())
    raise UnknownClassError(f"Unknown class {name!r}; the configured classes are: {known}.")


def color_rgb(name: str) -> tuple[int, int, int]:
    """Return the display colour of a class, grey for an unknown or empty name."""
    try:
        return class_by_name(name).color_rgb
    except UnknownClassError:
        return (128, 128, 128)
