"""The CustomResourceDefinitions kairay serves, and an API-server-faithful validator for them."""

from kairay.api.crds.schema import apply_defaults, load_crd, validate_object

__all__ = ["apply_defaults", "load_crd", "validate_object"]
