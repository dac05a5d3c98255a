"""embedft's Hydra launcher plugin (Hydra accepts launchers only from ``hydra_plugins``)."""
