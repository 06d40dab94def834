"""Config files may set only the keys their base config has: a misspelt key in
a file (``config.train.stpes = 10``) is an error naming it, not a new key that
nothing reads. The maps that users fill (scorers, models, prompt sets,
columns) stay open."""

import ml_collections


def locked(config: ml_collections.ConfigDict, open_maps: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """``config`` locked, except the maps at the dotted paths ``open_maps``."""
    config.lock()
    for path in open_maps:
        node = config
        for key in path.split("."):
            node = node[key]
        node.unlock()
    return config
