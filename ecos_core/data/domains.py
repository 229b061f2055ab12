"""The built-in domains' names, light enough for the config to import."""

BUILTIN_DOMAINS: tuple[str, ...] = ("mnist", "optdigits", "mnistm", "synth", "animal", "letters")
DISTRACTOR_DOMAINS: tuple[str, ...] = ("animal", "letters")
