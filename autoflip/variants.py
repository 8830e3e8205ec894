"""AutoFLIP's variants, by algorithm name: light to import, so the plug-in registers the
names without importing torch."""

VARIANTS = {  # name -> (structured, unstructured, adaptive)
    "autoflip": (True, True, True),
    "autoflip_unstructured": (False, True, True),
    "autoflip_structured": (True, False, False),
    "autoflip_static": (True, True, False),
}
