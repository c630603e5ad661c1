"""One model serving many engine processes: a scorer server and its client.

A GPU holds one model, but a tournament manager (cutechess-cli, fastchess) runs each
engine of each concurrent game as its own process, and one process's threads share
one interpreter lock: sixteen games' prompts, SANs and tokenization then queue behind
each other. The server splits the work at the token ids:

* :class:`ScorerServer` owns the model (an :class:`engine.scoring.LMScorer`) and
  listens on a Unix socket. Each connection gets a thread that reads a request,
  puts it into the scorer's batches (so concurrent clients share forwards, pipelined)
  and sends the answer back. It does no tokenization.
* :class:`RemoteScorer` is what an engine process uses instead of a loaded model
  (``model.server: PATH`` in the engine config). It has the model's tokenizer and
  does a move's host work itself: the prompt's and candidates' token ids and their
  trie (:func:`engine.scoring.candidate_job`); the server gets ids and a trie.

Start a server with ``mistral-chess serve --socket PATH`` (the engine config's model,
sized with ``--games`` for that many concurrent games), then run engines with
``model.server=PATH``. A dropped connection is re-made once per request (the server
restarted); when that fails the request raises :class:`ServerError` and the engine's
player answers a fallback move, as for any model error.

Messages are pickled (:mod:`multiprocessing.connection`), which runs code on
unpickling: the socket is made readable and writable by its owner only, and
``MISTRAL_CHESS_SERVER_KEY`` (when set, on both sides) adds the HMAC handshake of
:mod:`multiprocessing.connection` as well.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Sequence
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from loguru import logger

from engine.errors import EngineError
from engine.prompt import Prompt
from engine.scoring import Cancelled, Scores, candidate_job
from engine.tokentree import CandidateTree, ContextEncoder

KEY_ENV = "MISTRAL_CHESS_SERVER_KEY"
PROTOCOL = 1
# Texts whose ids the client's tokenizer must give as the server's does.
_PROBE = ('[Event "?"]\n[White "a"]\n\n1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. O-O Nf6 5. Re1 b5 6. Bb3 d6 *',
          " exd8=Q+ 1/2-1/2", " Qxf7#")


class ServerError(EngineError):
    """The model server could not be reached, or refused or failed a request."""


def _authkey() -> bytes | None:
    key = os.environ.get(KEY_ENV, "")
    return key.encode() if key else None


class ScorerServer:
    """Serves one :class:`engine.scoring.LMScorer` to engine processes over a Unix socket.

    ``start()`` accepts connections in a background thread; ``serve_forever()`` in
    the calling one. ``close()`` stops accepting and closes every connection.
    """

    def __init__(self, scorer: Any, socket_path: str | os.PathLike[str], *, source: str = "") -> None:
        self.scorer = scorer
        self.path = str(socket_path)
        self.source = source
        tok = scorer.tokenizer
        self._tokenizer_path = str(getattr(tok, "name_or_path", "") or "")
        if Path(self.path).exists():
            if _listening(self.path):
                raise ServerError(f"a server is already listening on {self.path}")
            logger.info("model server: removing the stale socket {}", self.path)
            os.unlink(self.path)
        old = os.umask(0o177)  # the socket: owner read/write only
        try:
            self._listener = Listener(self.path, family="AF_UNIX", authkey=_authkey())
        except OSError as exc:
            raise ServerError(f"cannot listen on {self.path}: {exc}") from exc
        finally:
            os.umask(old)
        self._closed = threading.Event()
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.clients = 0

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> ScorerServer:
        self._thread = threading.Thread(target=self.serve_forever, name="scorer-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        logger.info("model server on {}", self.path)
        while not self._closed.is_set():
            try:
                conn = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    break
                raise
            except Exception as exc:  # a failed handshake (wrong key) ends that client only
                logger.warning("model server: a client was refused: {}: {}", type(exc).__name__, exc)
                continue
            with self._lock:
                self._conns.add(conn)
                self.clients += 1
            threading.Thread(target=self._serve, args=(conn,), name="scorer-client", daemon=True).start()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            for conn in list(self._conns):
                try:
                    conn.close()
                except OSError:
                    pass
            self._conns.clear()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ScorerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        scorer = self.scorer
        cfg = getattr(getattr(scorer, "model", None), "config", None)
        return {
            "protocol": PROTOCOL,
            "tokenizer": self._tokenizer_path,
            "probe": [scorer.encode(t, add_special_tokens=s) for t in _PROBE for s in (False, True)],
            "max_position_embeddings": getattr(cfg, "max_position_embeddings", None),
            "fast": bool(getattr(scorer, "fast", False)),
            "source": self.source,
            "window_plies": int(getattr(scorer, "window_plies", 0)),
        }

    def _serve(self, conn: Connection) -> None:
        try:
            while not self._closed.is_set():
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    return
                except Exception as exc:  # not a message this protocol sends
                    self._send(conn, ("error", "ServerError", f"unreadable request: {type(exc).__name__}: {exc}"))
                    return
                self._send(conn, self._answer(msg))
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _send(self, conn: Connection, reply: tuple[Any, ...]) -> None:
        try:
            conn.send(reply)
        except (OSError, ValueError):  # the client left; its thread ends at the next recv
            pass

    def _answer(self, msg: Any) -> tuple[Any, ...]:
        if not isinstance(msg, tuple) or not msg or not isinstance(msg[0], str):
            return ("error", "ServerError", f"malformed request {type(msg).__name__}: expected (verb, ...)")
        verb, args = msg[0], msg[1:]
        self.requests += 1
        try:
            if verb == "score":
                prefix, suffixes, tree = args
                if not isinstance(tree, CandidateTree) or len(tree.cand_edges) != len(suffixes):
                    raise ServerError("score: the trie does not match the candidates")
                return ("ok", self.scorer.score_tree(prefix, suffixes, tree))
            if verb == "generate":
                text, add_special, kwargs = args
                return ("ok", self.scorer.generate(Prompt(text, add_special, ""), **kwargs))
            if verb == "info":
                return ("ok", self.info())
            if verb == "ping":
                return ("ok", None)
            raise ServerError(f"unknown request {verb!r} (this server speaks protocol {PROTOCOL})")
        except Exception as exc:  # reported to that client; the server goes on
            if not isinstance(exc, (ServerError, Cancelled)):
                logger.exception("model server: {} failed", verb)
            return ("error", type(exc).__name__, str(exc))


class RemoteScorer:
    """The scorer interface the engine's :class:`engine.player.Player` uses, answered
    by a :class:`ScorerServer`. Tokenization is done here, with the server's tokenizer
    (loaded from the path the server reports, and checked against the server's ids).

    Safe to share between threads (the bot's games): each request takes a connection
    of its own from a pool, so concurrent requests reach the server together and share
    its forwards; tokenization is serialized (tokenizers are not thread-safe). A request
    cannot be withdrawn once sent: ``cancel`` is checked before sending, and an answer
    that comes is used (one batched forward is tens of milliseconds).
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, tokenizer: Any = None, timeout_s: float = 10.0) -> None:
        self.path = str(socket_path)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # the pool and the counters
        self._tok_lock = threading.Lock()
        self._idle: list[Connection] = []
        self._open = 0
        self.reconnects = 0
        info = self._call(("info",))
        if info.get("protocol") != PROTOCOL:
            raise ServerError(f"the server at {self.path} speaks protocol {info.get('protocol')}, not {PROTOCOL}")
        if tokenizer is None:
            tokenizer = _load_tokenizer(info["tokenizer"], self.path)
        self.tokenizer = tokenizer
        self.encoder = ContextEncoder(tokenizer)
        mine = [self.encoder.encode(t, add_special_tokens=s) for t in _PROBE for s in (False, True)]
        if mine != info["probe"]:
            raise ServerError(f"the tokenizer {info['tokenizer']!r} gives other ids here than on the server "
                              f"at {self.path}: different tokenizer files or versions")
        self.fast = bool(info["fast"])
        self.source = info.get("source", "")
        self.window_plies = int(info.get("window_plies") or 0)  # the served model's board windows
        self.model = types.SimpleNamespace(
            config=types.SimpleNamespace(max_position_embeddings=info["max_position_embeddings"])
        )

    # -- connection -------------------------------------------------------------------
    def _connect(self) -> Connection:
        try:
            conn = Client(self.path, family="AF_UNIX", authkey=_authkey())
        except (OSError, EOFError) as exc:
            raise ServerError(f"no model server at {self.path}: {exc} (start one with "
                              f"`mistral-chess serve --socket {self.path}`)") from exc
        except Exception as exc:  # multiprocessing.AuthenticationError
            raise ServerError(f"the model server at {self.path} refused this client: {exc} "
                              f"(is {KEY_ENV} the same on both sides?)") from exc
        with self._lock:
            self._open += 1
        return conn

    def _take(self) -> Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _drop(self, conn: Connection) -> None:
        with self._lock:
            self._open -= 1
        try:
            conn.close()
        except OSError:
            pass

    @property
    def connections(self) -> int:
        """Connections open to the server now (one per request in flight, at most)."""
        return self._open

    def _call(self, msg: tuple[Any, ...]) -> Any:
        for attempt in (0, 1):
            conn = self._take()
            if attempt:
                with self._lock:
                    self.reconnects += 1
            try:
                conn.send(msg)
                if not conn.poll(self.timeout_s):
                    self._drop(conn)
                    raise ServerError(f"the model server at {self.path} did not answer {msg[0]!r} "
                                      f"within {self.timeout_s:g} s")
                reply = conn.recv()
            except (EOFError, OSError) as exc:
                self._drop(conn)
                with self._lock:  # the server went away: every idle connection is dead too
                    stale, self._idle = self._idle, []
                for c in stale:
                    self._drop(c)
                if attempt:
                    raise ServerError(f"the model server at {self.path} dropped the connection: "
                                      f"{type(exc).__name__}: {exc}") from exc
                logger.warning("model server connection lost ({}); connecting again", type(exc).__name__)
                continue
            with self._lock:
                self._idle.append(conn)
            break
        if reply[0] == "ok":  # an answer that came is used, even if its caller was cancelled meanwhile
            return reply[1]
        _, kind, text = reply
        if kind == "Cancelled":
            raise Cancelled()
        raise ServerError(f"the model server failed {msg[0]!r}: {kind}: {text}")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)

    # -- the scorer interface -----------------------------------------------------------
    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        with self._tok_lock:
            return self.encoder.encode(text, add_special_tokens=add_special_tokens)

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.encode(prompt.text, add_special_tokens=prompt.add_special_tokens))

    def score(self, prompt: Prompt, continuations: Sequence[str], cancel: Any = None) -> Scores:
        if not continuations:
            return Scores([], [], 0)
        with self._tok_lock:
            prefix, suffixes, tree = candidate_job(self.encoder, prompt, continuations)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        logps = self._call(("score", prefix, suffixes, tree))
        return Scores(list(logps), [len(s) for s in suffixes], len(prefix) + sum(len(s) for s in suffixes))

    def generate(
        self, prompt: Prompt, *, max_new_tokens: int, temperature: float, generator_seed: int | None = None,
        cancel: Any = None,
    ) -> tuple[str, int]:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        kwargs = {"max_new_tokens": max_new_tokens, "temperature": temperature, "generator_seed": generator_seed}
        text, n = self._call(("generate", prompt.text, prompt.add_special_tokens, kwargs))
        return str(text), int(n)

    def warmup(self, **_: Any) -> int:
        """The server captured its graphs when it started."""
        return 0

    def reset_cache(self) -> None:
        """The server's caches are matched by token ids; another engine's games share them."""


def _listening(path: str) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _load_tokenizer(name: str, path: str) -> Any:
    if not name:
        raise ServerError(f"the model server at {path} did not say where its tokenizer is")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise ServerError(f"cannot load the model server's tokenizer {name!r}: {type(exc).__name__}: {exc}") from exc
