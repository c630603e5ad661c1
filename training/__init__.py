"""mistral-chess training: from games to examples to fine-tuned models the engine loads.

One module per concern:

- :mod:`training.config`      -- typed configs of the three commands (YAML + overrides)
- :mod:`training.sources`     -- LAION parquet and PGN readers, replay into SAN, corrupt records
- :mod:`training.selfplay`    -- ``dataset selfplay``: parallel, resumable Stockfish games
- :mod:`training.examples`    -- prompt/completion examples (engine.prompt) and their tokens
- :mod:`training.dataset`     -- ``dataset build``: workers, split by game, parquet + stats
- :mod:`training.data`        -- tokenized examples, packing, batch order, collator
- :mod:`training.modeling`    -- tokenizer, model (QLoRA/LoRA/full/scratch), memory estimate, saving
- :mod:`training.evaluation`  -- validation loss, exact-move accuracy, legal-move rate
- :mod:`training.trainer`     -- ``train``: the loop, checkpoints, exact resume
- :mod:`training.chess_tokenizer` -- a small PGN BPE tokenizer for scratch models
- :mod:`training.merge`       -- ``merge``: adapter + base -> one model
- :mod:`training.plots`       -- PNG curves from the JSONL log
"""
