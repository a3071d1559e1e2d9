"""Configuration: YAML files -> validated models (:mod:`.schema`) -> compiled snapshot."""
