"""mistral-chess engine: a UCI chess engine whose moves come from a causal language model.

The package is split by concern:

- :mod:`engine.prompt`   -- the one place that writes the PGN text the model reads
- :mod:`engine.config`   -- typed engine configuration (YAML + overrides)
- :mod:`engine.model`    -- loading a Hugging Face causal LM (+ LoRA adapter, NF4)
- :mod:`engine.scoring`  -- log-probabilities of candidate moves, free generation
- :mod:`engine.player`   -- move choice, fallbacks, resign and draw policies
- :mod:`engine.timeman`  -- per-move time budget from the clock
- :mod:`engine.uci`      -- the UCI protocol front end
"""

__version__ = "0.1.0"
