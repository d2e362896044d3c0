"""Name <-> object conversion shared by keras.regularizers and keras.constraints.

Both are "a callable with a config": given by name ('l2', 'max_norm'), as an object, as a
saved {"class_name", "config"} dict or as any callable, and saved back as such a dict.
"""
from __future__ import annotations


class ObjectCodec:
    """serialize / deserialize / get for one kind of object (`what`: "regularizer", "constraint")."""

    def __init__(self, what: str, base: type, by_name: dict, module: str):
        self.what, self.base, self.by_name, self.module = what, base, by_name, module

    def serialize(self, obj):
        """JSON form for model configs: {"class_name", "config"}; None stays None."""
        if obj is None:
            return None
        if isinstance(obj, self.base):
            return {"class_name": type(obj).__name__, "config": obj.get_config()}
        raise TypeError(f"cannot save a model whose {self.what} is the plain callable {obj!r}; subclass "
                        f"keras.{self.module}.{self.base.__name__} and give it get_config()")

    def deserialize(self, config, custom_objects=None):
        name = config.get("class_name", "")
        cls = (custom_objects or {}).get(name) or self.by_name.get(name)
        if cls is None:
            known = sorted(k for k in self.by_name if k[0].isupper())
            raise ValueError(f"unknown {self.what} {name!r}; known: {known} (one of your own: pass it in "
                             f"custom_objects)")
        cfg = config.get("config", {})
        return cls.from_config(cfg) if hasattr(cls, "from_config") else cls(**cfg)

    def get(self, identifier):
        """None | a name | an object | {'class_name', 'config'} | a callable -> the object (or None)."""
        if identifier is None:
            return None
        if isinstance(identifier, dict):
            return self.deserialize(identifier)
        obj = self.by_name.get(identifier) if isinstance(identifier, str) else identifier
        if obj is None or not callable(obj):
            raise ValueError(f"Could not interpret {self.what} identifier: {identifier}")
        return obj() if isinstance(obj, type) else obj
