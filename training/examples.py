"""From checked games to training examples: prompt/completion text and tokens.

The prompt text comes from the engine's prompt module (:class:`engine.prompt.PromptBuilder`,
:func:`engine.prompt.movetext`), so training sees exactly what the engine writes at play
time. Two kinds of example:

``next_move``
    prompt = the game so far (header + open-ended move text, ``... 12.``),
    completion = ``" " + SAN`` of the move played (``Prompt.completion``).
``continuation``
    same prompt, completion = the rest of the move text (``continuation_plies`` moves, or
    to the end of the game followed by the result and, in tokens, EOS).

Tokens without tokenizing every example: for a base template every example of a game
(with the same header) is a prefix of the longest one, and the Mistral tokenizer does
not merge across the space that starts a SAN move or a move number. So the longest
text is tokenized once with offsets, and each example's ``input_ids`` are the tokens
up to its end, its prompt the tokens up to the prompt's end. This is used only where
the prefix relation holds and the cut falls on token boundaries; every
``verify_tokens_every``-th example is also tokenized directly and compared, and a
mismatch switches the worker to direct tokenization (reported in the stats). The
reference is what the engine does: ``tokenize(prompt + completion)``, with the prompt
tokens being the part shared with ``tokenize(prompt)``.

Cheaper still, for tokenizers where it is provable (:func:`words_tokenize_alone`): a
SentencePiece-style BPE (Metaspace, one pre-token) whose vocabulary has no token with
``▁`` after another character can never merge across a space, and BPE merges on either
side of a boundary no merge can cross do not influence each other. So the move text after
the header is the concatenation of its space-led words' tokens (``" Nf3"``, ``" 12."``),
each tokenized once per worker and cached, and only the header with the first move
number (``"[White ...]\n\n1."``) is tokenized as one unit. Sampled verification applies
to this path too.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import chess

from engine.prompt import (
    STANDARD_FEN,
    Prompt,
    PromptBuilder,
    PromptTemplate,
    movetext,
    play_variables,
    window_end,
    window_start,
)
from training.config import DatasetConfig
from training.data import shared_prefix_len
from training.sources import Game, uci_move

_ANY_BOARD = chess.Board()  # play_variables reads the side to move only when no engine_color is given

COLUMNS = ("game", "kind", "ply", "prompt", "completion", "eos", "fen", "input_ids", "prompt_tokens")


@dataclasses.dataclass
class Example:
    game: str
    kind: str
    ply: int  # plies played before the prompt's position
    prompt: Prompt
    completion: str
    eos: bool  # the completion ends the game: EOS follows it in tokens
    fen: str = ""  # the prompt's position (validation examples only; the evaluation needs it)
    input_ids: list[int] | None = None
    prompt_tokens: int = 0
    # examples.legal_tokens: for each move of the completion, in order, the first tokens of the
    # legal moves of its position (sorted, distinct)
    legal_ids: list[list[int]] | None = None

    @property
    def text(self) -> str:
        return self.prompt.text + self.completion


def split_of(key: bytes, fraction: float, seed: int) -> str:
    """``validation`` for a stable ``fraction`` of games, by a hash of the moves (``Game.key``):
    a game and its duplicates always land in the same split, and adding data moves no game."""
    if fraction <= 0:
        return "train"
    h = hashlib.blake2b(key + seed.to_bytes(8, "little", signed=True), digest_size=8).digest()
    return "validation" if int.from_bytes(h, "little") / 2**64 < fraction else "train"


class ExampleMaker:
    """Examples of one game, as the config says. One per worker process."""

    def __init__(self, cfg: DatasetConfig, *, chat_tokenizer: Any = None, eval_positions: bool = False) -> None:
        self.cfg = cfg
        self.ex = cfg.examples
        if eval_positions:  # held-out next-move positions of any ply, both sides
            self.ex = dataclasses.replace(
                cfg.examples,
                kinds={"next_move": 1.0},
                positions_per_game=cfg.split.eval_positions_per_game,
                moves="all",
                min_ply=0,
                max_ply=0,
                seed=cfg.examples.seed + 1,
            )
        self.players = cfg.players
        template = PromptTemplate.load(self.ex.template)
        self.builder = PromptBuilder(template, chat_tokenizer)
        self.kinds = [k for k, w in self.ex.kinds.items() if w > 0]
        self.weights = [self.ex.kinds[k] for k in self.kinds]
        self.counts: collections.Counter[str] = collections.Counter()

    # -- which positions ------------------------------------------------------------------
    def plan(self, n: int, result: str, key: bytes, root_fen: str = STANDARD_FEN) -> list[tuple[int, str]]:
        """(ply, kind) of each example of a game of ``n`` plies; depends only on the config
        seed and the game (its key), so it can be made before the moves are replayed."""
        lo = self.ex.min_ply
        hi = min(n, self.ex.max_ply) if self.ex.max_ply else n
        root_white = _root_turn(root_fen) == chess.WHITE
        plies = list(range(lo, hi))
        window = self.ex.window_plies
        if window and self.kinds == ["continuation"]:
            # A continuation covers its window from its first ply or, a coin toss per window,
            # its second (that move is read, not trained), so that the header's engine name
            # (on the side to move) sits on both colours as at play time.
            coin = random.Random(int.from_bytes(key[8:16] or key[:8], "little") ^ self.ex.seed)
            offset = self.window_offset(key)
            starts = [k for k in plies if window_start(k, window, offset) == k]
            # (Only where the second ply is still in the window: a window before the first
            # offset's can be one ply long.)
            plies = [
                k + 1 if window > 1 and coin.random() < 0.5 and k + 1 < min(hi, window_end(k, window, offset)) else k
                for k in starts
            ]
        if self.ex.moves == "winner":
            if result == "1/2-1/2":
                if self.ex.draws == "skip":
                    self.counts["games_skipped_draw"] += 1
                    return []
            else:
                winner_white = result == "1-0"
                # White moves at even plies when the game starts with White to move.
                plies = [k for k in plies if ((k % 2 == 0) == root_white) == winner_white]
        if not plies:
            return []
        rng = random.Random(int.from_bytes(key[:8], "little") ^ (self.ex.seed * 0x9E3779B97F4A7C15))
        if self.ex.positions_per_game and len(plies) > self.ex.positions_per_game:
            plies = sorted(rng.sample(plies, self.ex.positions_per_game))
        if len(self.kinds) == 1:
            return [(k, self.kinds[0]) for k in plies]
        return [(k, rng.choices(self.kinds, self.weights)[0]) for k in plies]

    def window_offset(self, key: bytes) -> int:
        """Where the game's windows start: 0, or with ``examples.window_offset: -1`` a ply in
        0..window_plies-1 drawn from the game's key and the build's seed (the same in every build)."""
        if self.ex.window_offset == 0 or not self.ex.window_plies:
            return 0
        seed = self.cfg.examples.seed  # the build's, also for the held-out positions (whose maker has seed + 1)
        h = hashlib.blake2b(key + b"window-offset" + seed.to_bytes(8, "little", signed=True), digest_size=8)
        return int.from_bytes(h.digest(), "little") % self.ex.window_plies

    def continuation_end(self, ply: int, n: int, offset: int = 0) -> int:
        end = n if not self.ex.continuation_plies else min(n, ply + self.ex.continuation_plies)
        if self.ex.window_plies:  # the engine restarts its prompt at the next window
            end = min(end, window_end(ply, self.ex.window_plies, offset))
        return end

    def sans_needed(self, plan: list[tuple[int, str]], n: int, key: bytes = b"") -> int:
        """Plies whose SAN the plan's examples use (``key``: the game's, for its window offset)."""
        offset = self.window_offset(key)
        need = 0
        for ply, kind in plan:
            need = max(need, ply + 1 if kind == "next_move" else self.continuation_end(ply, n, offset))
        return need

    # -- texts ------------------------------------------------------------------------------
    def variables(self, game: Game, ply: int) -> dict[str, Any]:
        p = self.players
        if p.mode == "play":
            white_to_move = (ply % 2 == 0) == (_root_turn(game.root_fen) == chess.WHITE)
            return play_variables(
                _ANY_BOARD,
                engine_color=chess.WHITE if white_to_move else chess.BLACK,
                engine_name=p.engine_name,
                opponent_name=p.opponent_name,
                engine_elo=p.engine_elo or None,
                opponent_elo=p.opponent_elo or None,
                result=game.result,
            )
        return {
            "white": game.white or p.white,
            "black": game.black or p.black,
            "white_elo": game.white_elo or p.white_elo or None,
            "black_elo": game.black_elo or p.black_elo or None,
            "result": game.result,
        }

    def examples(self, game: Game, plan: list[tuple[int, str]] | None = None) -> list[Example]:
        """The game's examples (for ``plan``, default: :meth:`plan`), without tokens."""
        out: list[Example] = []
        if plan is None:
            plan = self.plan(game.n_plies, game.result, game.key, game.root_fen)
        if not plan:
            return out
        sans = game.sans
        n = game.n_plies
        fullmove, white = 1, True
        if game.root_fen != STANDARD_FEN:
            root = chess.Board(game.root_fen)
            fullmove, white = root.fullmove_number, root.turn == chess.WHITE
        where = game.location
        # Where each prompt's move text starts: ply -> (FEN, move number, White to move) of the
        # game's root, and with board windows of each window's root (one replay for all of them).
        window = self.ex.window_plies
        offset = self.window_offset(game.key)
        starts = {0: (game.root_fen, fullmove, white)}
        later = sorted({window_start(ply, window, offset) for ply, _ in plan} - {0}) if window else []
        for r, fen in positions_fen(game, later).items():
            fields = fen.split()
            starts[r] = (fen, int(fields[5]), fields[1] == "w")
        for ply, kind in plan:
            start = window_start(ply, window, offset)
            start_fen, start_fullmove, start_white = starts[start]
            prompt = self.builder.from_sans(sans[start:ply], root_fen=start_fen, variables=self.variables(game, ply))
            if kind == "next_move":
                out.append(Example(where, kind, ply, prompt, prompt.completion(sans[ply]), False))
                continue
            end = self.continuation_end(ply, n, offset)
            # The open-ended move text up to the prompt is a prefix of the plain move text of the
            # longer game; the completion is the difference (the prompt module writes both).
            head = movetext(sans[start:ply], fullmove=start_fullmove, white_to_move=start_white, open_end=True)
            full = movetext(sans[start:end], fullmove=start_fullmove, white_to_move=start_white, open_end=False)
            if not full.startswith(head):  # pragma: no cover - would mean engine.prompt changed its format
                raise AssertionError(f"move text {full!r} does not extend the prompt's {head!r}")
            completion = full[len(head) :]
            ends = end == n and self.ex.end_with_result
            if ends:
                completion += " " + game.result
            out.append(Example(where, kind, ply, prompt, completion, ends))
        return out


def _root_turn(fen: str) -> chess.Color:
    if fen == STANDARD_FEN:
        return chess.WHITE
    return chess.WHITE if fen.split()[1] == "w" else chess.BLACK


def replay(game: Game, plies: Iterable[int]) -> Iterator[tuple[int, chess.Board]]:
    """The board before each of ``plies`` (ascending, one board mutated in place: read it before
    the next step): one replay, of the source's UCI moves where the game has them, else of its SAN."""
    wanted = set(plies)
    if not wanted:
        return
    board = chess.Board(game.root_fen)
    last = max(wanted)
    moves: Iterable[Any] = game.sans
    push: Callable[[Any], Any] = board.push_san
    if game.uci is not None and len(game.uci) >= len(game.sans):
        # The source's UCI moves, checked legal when the game was read: pushed as they are.
        moves, push = map(uci_move, game.uci[: len(game.sans)]), board.push
    for k, move in enumerate(moves):
        if k in wanted:
            yield k, board
        if k >= last:
            break
        push(move)


def positions_fen(game: Game, plies: list[int]) -> dict[int, str]:
    """FEN of the positions before the given plies (one replay, :func:`replay`)."""
    return {k: board.fen() for k, board in replay(game, plies)}


def completion_moves(completion: str) -> int:
    """SAN moves in a completion (its words that are neither move numbers nor a result)."""
    return sum(1 for w in completion.split() if not w[0].isdigit())


def add_legal_ids(game: Game, examples: list[Example], first_token: Callable[[str], int]) -> None:
    """Set each example's ``legal_ids``: for the position before each move its completion
    writes, the distinct first tokens (``first_token(" " + SAN)``) of every legal move. One
    replay of the game serves all its examples."""
    from engine.prompt import legal_sans

    wanted: dict[int, list[int]] = {}
    spans = []
    for e in examples:
        n = completion_moves(e.completion)
        spans.append((e.ply, n))
        for k in range(e.ply, e.ply + n):
            wanted[k] = []
    if not wanted:
        for e in examples:
            e.legal_ids = []
        return
    for k, board in replay(game, wanted):
        wanted[k] = sorted({first_token(" " + san) for san in legal_sans(board, list(board.legal_moves))})
    for e, (ply, n) in zip(examples, spans, strict=True):
        e.legal_ids = [wanted[k] for k in range(ply, ply + n)]


class TokenizationMismatch(RuntimeError):
    pass


class ExampleTokenizer:
    """Tokens of examples, fast where provably equal to direct tokenization (module docstring)."""

    def __init__(self, tokenizer: Any, *, eos_id: int | None, verify_every: int) -> None:
        self.tok = tokenizer  # a tokenizers.Tokenizer (the fast backend)
        self.eos_id = eos_id
        self.verify_every = verify_every
        self.fast = True
        self.counts: collections.Counter[str] = collections.Counter()
        self.mismatch: str | None = None
        self._seen = 0
        self._headers: dict[tuple[str, bool], list[int]] = {}
        self.by_words = words_tokenize_alone(tokenizer)
        self._words: dict[str, list[int]] = {}

    def word_ids(self, word: str) -> list[int]:
        """The tokens of ``word`` (a space-led move or move number) tokenized alone, remembered."""
        got = self._words.get(word)
        if got is None:
            if len(self._words) > 65536:  # SAN and move numbers are a few thousand; keep it bounded anyway
                self._words.clear()
            got = self._words[word] = self.tok.encode(word, add_special_tokens=False).ids
        return got

    def first_token(self, word: str) -> int:
        """The first token of ``word`` (a space-led SAN move) tokenized alone."""
        return self.word_ids(word)[0]

    def direct(self, ex: Example) -> tuple[list[int], int]:
        add = ex.prompt.add_special_tokens
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)  # _fast: no offsets (tokenizers >= 0.21)
        full, head = encode([ex.text, ex.prompt.text], add_special_tokens=add)
        return full.ids, shared_prefix_len(full.ids, head.ids)

    def _own_text_batch(self, examples: list[Example]) -> None:
        """Examples no longer text of their game holds (board windows: each has its own FEN):
        each is cut from its own whole text's tokens (one encoding with offsets, the prompt's
        end on a token boundary; the module docstring's argument, sampled verification included),
        the rest tokenized directly."""
        if not self.fast:
            self._direct_batch(examples)
            return
        rest: list[Example] = []
        for add, group in _by_special_tokens(examples):
            for ex, enc in zip(group, self.tok.encode_batch([ex.text for ex in group], add_special_tokens=add), strict=True):
                offsets = enc.offsets
                starts, ends = [a for a, _ in offsets], [b for _, b in offsets]
                n_prompt = _boundary(starts, ends, len(ex.prompt.text))
                if n_prompt is None or not ends or ends[-1] != len(ex.text):
                    rest.append(ex)
                    continue
                ex.input_ids, ex.prompt_tokens = enc.ids, n_prompt
                self.counts["fast"] += 1
                self._seen += 1
                if self.verify_every and (self._seen - 1) % self.verify_every == 0:
                    self._verify(ex)
        self._direct_batch(rest)

    def _direct_batch(self, examples: list[Example]) -> None:
        """:meth:`direct` for many examples in one batch call per kind (board windows, each with
        its own FEN, all come here: one call for all of them instead of one per example)."""
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        for add, group in _by_special_tokens(examples):
            full = encode([ex.text for ex in group], add_special_tokens=add)
            head = encode([ex.prompt.text for ex in group], add_special_tokens=add)
            for ex, f, h in zip(group, full, head, strict=True):
                ex.input_ids, ex.prompt_tokens = f.ids, shared_prefix_len(f.ids, h.ids)
                self.counts["direct"] += 1

    def tokenize(self, games: list[list[Example]]) -> None:
        """Fill ``input_ids`` / ``prompt_tokens`` of every example (EOS appended where it ends a game).

        One text is tokenized per game: its longest example. Examples whose PGN header
        differs (in ``play`` mode the names follow the side to move) take their header's
        tokens, tokenized once per distinct header, followed by the longest text's move
        tokens; this needs the header to end on a token boundary, which is checked.
        """
        slow: list[Example] = []
        tops: list[Example] = []
        todo: list[list[Example]] = []
        for exs in games:
            if not exs:
                continue
            if not self.fast:
                slow.extend(exs)
                continue
            top = max(exs, key=lambda e: len(e.prompt.text) + len(e.completion))
            if self.by_words and self._by_words(exs, top):
                continue
            todo.append(exs)
            tops.append(top)
        if tops:
            encs: dict[bool, Any] = {}
            for add in (True, False):
                texts = [t.text for t in tops if t.prompt.add_special_tokens is add]
                encs[add] = iter(self.tok.encode_batch(texts, add_special_tokens=add)) if texts else iter(())
            for exs, top in zip(todo, tops, strict=True):
                enc = next(encs[top.prompt.add_special_tokens])
                cut = _Cutter(top, enc, self._header_ids)
                for ex in exs:
                    got = cut(ex)
                    if got is None:
                        slow.append(ex)
                        continue
                    ex.input_ids, ex.prompt_tokens = got
                    self.counts["fast"] += 1
                    self._seen += 1
                    if self.verify_every and (self._seen - 1) % self.verify_every == 0:
                        self._verify(ex)
        self._own_text_batch(slow)
        for exs in games:
            for ex in exs:
                if ex.eos and self.eos_id is not None and ex.input_ids is not None:
                    ex.input_ids.append(self.eos_id)

    def _by_words(self, exs: list[Example], top: Example) -> bool:
        """Tokens of a game's examples from cached word tokens (module docstring); False
        (nothing set) when the texts are not of the shape that makes this exact."""
        if not top.prompt.add_special_tokens:
            return False
        head_len = len(_header_of(top.prompt.text))
        rest = top.text[head_len:]
        parts = rest.split(" ")
        if not all(parts):  # two spaces in a row, or a trailing one: "▁▁" may merge
            return False
        first = parts[0]
        # ends[char position in rest] = tokens of rest[len(first):position], at word ends.
        ids: list[int] = []
        ends = {len(first): 0}
        pos = len(first)
        word_ids = self.word_ids
        for part in parts[1:]:
            word = " " + part
            ids += word_ids(word)
            pos += len(word)
            ends[pos] = len(ids)
        text = top.text
        done: list[tuple[Example, list[int], int]] = []
        for ex in exs:
            p_text = ex.prompt.text
            head = _header_of(p_text)
            h = len(head)
            p_end = len(p_text) - h  # the prompt's end, in rest
            f_end = p_end + len(ex.completion)
            n_prompt, n_full = ends.get(p_end), ends.get(f_end)
            if n_prompt is None or n_full is None or not ex.prompt.add_special_tokens:
                return False
            if (ex is not top and text[head_len : head_len + p_end] != p_text[h:]) or (
                text[head_len + p_end : head_len + f_end] != ex.completion
            ):
                return False
            unit = self._header_ids(head + first, True)
            done.append((ex, unit + ids[:n_full], len(unit) + n_prompt))
        for ex, got_ids, n in done:
            ex.input_ids, ex.prompt_tokens = got_ids, n
            self.counts["fast"] += 1
            self.counts["fast_words"] += 1
            self._seen += 1
            if self.verify_every and (self._seen - 1) % self.verify_every == 0:
                self._verify(ex)
        return True

    def _header_ids(self, header: str, add_special_tokens: bool) -> list[int]:
        key = (header, add_special_tokens)
        ids = self._headers.get(key)
        if ids is None:
            if len(self._headers) > 4096:  # names from PGN files vary: keep the cache bounded
                self._headers.clear()
            ids = self._headers[key] = list(self.tok.encode(header, add_special_tokens=add_special_tokens).ids)
        return ids

    def _verify(self, ex: Example) -> None:
        assert ex.input_ids is not None
        self.counts["verified"] += 1
        ids, n = self.direct(ex)
        if ids != ex.input_ids or n != ex.prompt_tokens:
            self.fast = False
            self.counts["verify_mismatch"] += 1
            self.mismatch = (
                f"fast tokenization differs from direct tokenization for {ex.game} ply {ex.ply}; "
                "switched to direct tokenization"
            )
            ex.input_ids, ex.prompt_tokens = ids, n


def words_tokenize_alone(tok: Any) -> bool:
    """Whether ``tok`` (a tokenizers.Tokenizer) provably tokenizes ``a + " " + b`` as
    ``a``'s tokens followed by ``" " + b``'s (``a`` not ending in a space, ``b`` not
    starting with one): a BPE with no normalizer and a single Metaspace pre-token, whose
    vocabulary has no token where ``▁`` follows another character, so no merge crosses
    the space. True for the Mistral tokenizer."""
    try:
        spec = json.loads(tok.to_str())
    except Exception:  # not a tokenizers.Tokenizer: no proof
        return False
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or spec.get("normalizer") is not None or model.get("dropout"):
        return False
    if pre.get("type") != "Metaspace" or pre.get("split", True) or pre.get("prepend_scheme") not in ("first", "always"):
        return False
    mark = pre.get("replacement")
    if mark != "\u2581":
        return False
    for token in model.get("vocab", {}):
        i = token.find(mark, 1)
        while i > 0:
            if token[i - 1] != mark:
                return False
            i = token.find(mark, i + 1)
    return True


def _by_special_tokens(examples: list[Example]) -> list[tuple[bool, list[Example]]]:
    """The examples in (at most) two groups, with and without special tokens: one batch call each."""
    groups: dict[bool, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.prompt.add_special_tokens, []).append(ex)
    return [(add, groups[add]) for add in (True, False) if add in groups]


def _boundary(starts: list[int], ends: list[int], pos: int) -> int | None:
    """Number of tokens covering text[:pos] exactly, or None when a token straddles ``pos``."""
    n = bisect.bisect_right(ends, pos)
    if n == 0 or ends[n - 1] != pos:
        return None
    if n < len(starts) and starts[n] < pos:
        return None
    return n


def _header_of(text: str) -> str:
    """The PGN tag section with the blank line after it (empty when there is none)."""
    i = text.find("\n\n")
    return text[: i + 2] if i >= 0 else ""


class _Cutter:
    """Token sequences of a game's examples, cut from the tokens of its longest example."""

    def __init__(self, top: Example, enc: Any, header_ids: Any) -> None:
        self.text = top.text
        self.ids = enc.ids
        self.starts = [a for a, _ in enc.offsets]
        self.ends = [b for _, b in enc.offsets]
        self.add = top.prompt.add_special_tokens
        self.header = _header_of(top.prompt.text)
        self.header_ids = header_ids
        self.n_header: int | None = None
        if self.header:
            n = _boundary(self.starts, self.ends, len(self.header))
            # Header swaps are safe only if the header's own tokens start the long text.
            if n is not None and list(self.ids[:n]) == header_ids(self.header, self.add):
                self.n_header = n

    def __call__(self, ex: Example) -> tuple[list[int], int] | None:
        if ex.prompt.add_special_tokens is not self.add:
            return None
        p_len = len(ex.prompt.text)
        full_len = p_len + len(ex.completion)
        if self.text.startswith(ex.prompt.text) and self.text[p_len:full_len] == ex.completion:
            n_full = _boundary(self.starts, self.ends, full_len)
            n_prompt = _boundary(self.starts, self.ends, p_len)
            if n_full is None or n_prompt is None:
                return None
            return list(self.ids[:n_full]), n_prompt
        # Another header before the same moves.
        header = _header_of(ex.prompt.text)
        if self.n_header is None or not header:
            return None
        h, th = len(header), len(self.header)
        moves_prompt = ex.prompt.text[h:]
        if self.text[th : th + len(moves_prompt)] != moves_prompt:
            return None
        if self.text[th + len(moves_prompt) : th + len(moves_prompt) + len(ex.completion)] != ex.completion:
            return None
        n_full = _boundary(self.starts, self.ends, th + len(moves_prompt) + len(ex.completion))
        n_prompt = _boundary(self.starts, self.ends, th + len(moves_prompt))
        if n_full is None or n_prompt is None:
            return None
        own = self.header_ids(header, self.add)
        return own + list(self.ids[self.n_header : n_full]), len(own) + n_prompt - self.n_header
