"""Adapter variants, one file each, all following the protocol in :mod:`lorakit.adapters.base`."""

from .adalora import AdaLoraAdapter
from .base import Adapter, BaseSpec, apply_weight, scaling, spec_for
from .dora import DoraAdapter
from .loha import LohaAdapter
from .lokr import LokrAdapter
from .lora import LoraAdapter

#: variant name -> adapter class; ``LoraConfig.variant`` selects from this table.
VARIANTS: dict[str, type[Adapter]] = {"lora": LoraAdapter, "dora": DoraAdapter, "loha": LohaAdapter,
                                   "lokr": LokrAdapter, "adalora": AdaLoraAdapter}


def variant_class(name: str) -> type[Adapter]:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown adapter variant {name!r}; expected one of {sorted(VARIANTS)}.") from None


__all__ = ["AdaLoraAdapter", "Adapter", "BaseSpec", "DoraAdapter", "LohaAdapter", "LokrAdapter", "LoraAdapter",
           "VARIANTS", "apply_weight", "scaling", "spec_for",
           "variant_class"]
