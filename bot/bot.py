"""The bot: checks, the event stream, challenges, games, matchmaking.

Start-up (:meth:`Bot.prepare`) fails fast, before any stream is opened: the token
must be known to the server and carry ``bot:play``, the account must be a BOT
account, and the model must load and play one test move.

Then :meth:`Bot.run` follows ``GET /api/stream/event`` (reconnecting after drops
and stalls). After every (re)connection it lists ``GET /api/account/playing`` and
resumes every game there, so a dropped stream, a server restart or a bot restart
never leaves a game unplayed. Challenges are answered by :mod:`bot.challenges`;
games run in :class:`~bot.game.GameRunner` threads that share one model.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import chess
from loguru import logger

from bot.challenges import check_challenge
from bot.client import LichessClient
from bot.config import BotConfig
from bot.errors import AccountError, ApiError, StartupError, TokenError
from bot.game import GameRunner, SharedContext, think_with_deadline
from bot.matchmaking import Matchmaker
from bot.streams import StreamFollower
from engine.config import EngineConfig
from engine.player import Player


class Bot:
    def __init__(
        self,
        config: BotConfig,
        client: LichessClient,
        *,
        scorer: Any = None,
        stop: threading.Event | None = None,
        max_games: int = 0,
    ) -> None:
        self.cfg = config
        self.client = client
        self.scorer = scorer
        self.stop = stop or client.stop
        self.max_games = max_games  # stop after this many finished games (0: never)
        self.user_id = ""
        self.username = ""
        self.ratings: dict[str, int] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.runners: dict[str, GameRunner] = {}
        self.opponents: dict[str, str] = {}  # game id -> opponent id
        self.pending: dict[str, tuple[float, str]] = {}  # accepted challenge id -> (expires, challenger id)
        self.handled: set[str] = set()  # challenge ids answered already
        self.results: collections.Counter[str] = collections.Counter()
        self.finished_games: list[str] = []
        self.matchmaker: Matchmaker | None = None
        self.follower: StreamFollower | None = None
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, config.challenge.concurrency), thread_name_prefix="model"
        )
        self._resync_at: float | None = None
        self._ctx: SharedContext | None = None

    # -- start-up ------------------------------------------------------------------------
    def check_account(self) -> dict[str, Any]:
        """Token with bot:play, a BOT account; remembers the bot's name and ratings."""
        info = self.client.test_token()
        profile = self.client.account()
        self.user_id = str(profile.get("id") or info.get("userId") or "").lower()
        self.username = str(profile.get("username") or self.user_id)
        if profile.get("title") != "BOT":
            raise AccountError(
                f"{self.username} is not a BOT account: upgrade it first with `mistral-chess bot upgrade` "
                "(irreversible; the account must not have played any game)"
            )
        perfs = profile.get("perfs") or {}
        self.ratings = {
            k: int(v["rating"]) for k, v in perfs.items() if isinstance(v, dict) and "rating" in v
        }
        logger.info("logged in as {} (BOT) on {}", self.username, self.client.base_url)
        return profile

    def test_move(self) -> None:
        """One move from the start position with the model, under a generous deadline."""
        player = Player(self.cfg.engine, self.scorer)
        board = chess.Board()
        started = time.monotonic()
        d = think_with_deadline(
            player, board, engine_color=chess.WHITE, pool=self.pool, deadline=started + 120.0
        )
        ms = (time.monotonic() - started) * 1000
        if d is None or d.move is None or d.source in ("error", "no-legal-move") or player.stats.timeouts:
            raise StartupError(f"the test move failed ({d.source if d else 'no answer'}): see the log above")
        logger.info("test move: 1. {} in {:.0f} ms ({})", board.san(d.move), ms, d.source)

    def prepare(self, loader: Callable[[EngineConfig], Any] | None = None) -> None:
        self.check_account()
        if self.scorer is None and loader is not None:
            logger.info("loading the model")
            try:
                self.scorer = loader(self.cfg.engine)
            except Exception as exc:  # ModelLoadError and whatever the loader throws
                raise StartupError(f"the model did not load: {exc}") from None
        games = self.cfg.challenge.concurrency
        if games > 1 and self.scorer is not None and hasattr(self.scorer, "warmup"):
            # Concurrent games share one scorer: capture the batched steps' CUDA graphs now
            # rather than during play, and let the game threads take the interpreter lock
            # back quickly after each torch call (docs/fastpath.md, "Many games at once").
            captured = self.scorer.warmup(max_games=games)
            sys.setswitchinterval(0.0005)
            logger.info("scorer warmed up for {} games at once ({} graphs)", games, captured)
        if self.cfg.test_move:
            self.test_move()

    # -- running ---------------------------------------------------------------------------
    def _context(self) -> SharedContext:
        if self._ctx is None:
            self._ctx = SharedContext(
                config=self.cfg,
                client=self.client,
                scorer=self.scorer,
                model_pool=self.pool,
                user_id=self.user_id,
                username=self.username,
                stop=self.stop,
            )
        return self._ctx

    def run(self) -> None:
        """Play until ``stop`` is set (or ``max_games`` games are over)."""
        if not self.user_id:
            self.check_account()
        self.matchmaker = Matchmaker(
            self.cfg.matchmaking, self.client, user_id=self.user_id, my_ratings=self.ratings
        )
        self.follower = StreamFollower(
            self.client,
            "/api/stream/event",
            endpoint="stream_event",
            handle=self._enqueue,
            on_connect=lambda: self.events.put({"type": "_connected"}),
            stop=self.stop,
        )
        reader = threading.Thread(target=self._read_events, name="event-stream", daemon=True)
        reader.start()
        try:
            while not self.stop.is_set():
                try:
                    event: dict[str, Any] | None = self.events.get(timeout=0.1)
                except queue.Empty:
                    event = None
                if event is not None:
                    self._dispatch(event)
                self._housekeeping()
        finally:
            self.stop.set()
            self.follower.close_current()
            for runner in list(self.runners.values()):
                runner.follower.close_current()
            for runner in list(self.runners.values()):
                runner.join(timeout=5.0)
            reader.join(timeout=5.0)
            self.pool.shutdown(wait=False, cancel_futures=True)
            logger.info(
                "bot stopped: {} games finished ({})",
                len(self.finished_games),
                ", ".join(f"{k} {v}" for k, v in sorted(self.results.items())) or "none",
            )

    def _enqueue(self, event: dict[str, Any]) -> bool:
        self.events.put(event)
        return False

    def _read_events(self) -> None:
        assert self.follower is not None
        reason = self.follower.run()
        self.events.put({"type": "_eventStreamEnd", "reason": reason})

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "_connected":
            self._resync()
        elif kind == "challenge":
            self._on_challenge(event.get("challenge") or {})
        elif kind == "challengeCanceled":
            cid = str((event.get("challenge") or {}).get("id", ""))
            if self.pending.pop(cid, None) is not None:
                logger.info("challenge {} was cancelled", cid)
        elif kind == "challengeDeclined":
            if self.matchmaker is not None:
                self.matchmaker.on_declined(event.get("challenge") or {})
        elif kind == "gameStart":
            game = event.get("game") or {}
            gid = str(game.get("gameId") or game.get("id") or "")
            self._start_game(gid, game)
        elif kind == "gameFinish":
            game = event.get("game") or {}
            gid = str(game.get("gameId") or game.get("id") or "")
            runner = self.runners.get(gid)
            if runner is not None:
                runner.notify_finished()
        elif kind == "_gameDone":
            self._on_game_done(str(event["id"]))
        elif kind == "_eventStreamEnd":
            reason = event.get("reason")
            if reason == "unauthorized":
                self.stop.set()
                raise TokenError("the server no longer accepts the token (401 on the event stream)")
            if not self.stop.is_set():
                logger.error("event stream ended ({}); stopping", reason)
                self.stop.set()
        elif kind:
            logger.debug("event {} ignored", kind)

    def _resync(self) -> None:
        """Resume every game the server lists as ongoing (after any (re)connection)."""
        try:
            games = self.client.playing()
        except ApiError as exc:
            logger.warning("cannot list ongoing games ({}); trying again soon", exc)
            self._resync_at = time.monotonic() + self.cfg.network.backoff_initial
            return
        self._resync_at = None
        for game in games:
            gid = str(game.get("gameId") or "")
            if gid and gid not in self.runners:
                logger.info("resuming game {} from the server's position", gid)
                self._start_game(gid, game)

    def _start_game(self, gid: str, info: dict[str, Any]) -> None:
        if not gid or gid in self.runners or gid in self.finished_games:
            return
        self.pending.pop(gid, None)
        if self.matchmaker is not None:
            self.matchmaker.on_game_start(gid)
        opponent = info.get("opponent") or {}
        self.opponents[gid] = str(opponent.get("id") or "").lower()
        runner = GameRunner(
            self._context(), gid, on_finish=lambda r: self.events.put({"type": "_gameDone", "id": r.game_id})
        )
        self.runners[gid] = runner
        runner.start()

    def _on_game_done(self, gid: str) -> None:
        runner = self.runners.pop(gid, None)
        self.opponents.pop(gid, None)
        if self.matchmaker is not None:
            self.matchmaker.note_activity()
        if runner is None or not runner.finished:
            return  # stopped, not finished: a restart resumes it
        self.finished_games.append(gid)
        if runner.result in ("1-0", "0-1"):
            won = (runner.result == "1-0") == (runner.color == chess.WHITE)
            self.results["won" if won else "lost"] += 1
        elif runner.result == "1/2-1/2":
            self.results["drawn"] += 1
        else:
            self.results[runner.status] += 1
        if self.max_games and len(self.finished_games) >= self.max_games:
            logger.info("{} games played; stopping as asked", len(self.finished_games))
            self.stop.set()

    def _on_challenge(self, ch: dict[str, Any]) -> None:
        cid = str(ch.get("id", ""))
        challenger = ch.get("challenger") or {}
        who = str(challenger.get("id") or "").lower()
        if not cid or cid in self.handled:
            return
        if ch.get("direction") == "out" or who == self.user_id:
            return  # our own challenge (matchmaking)
        self.handled.add(cid)
        busy = len(self.runners) + len(self.pending)
        with_them = sum(1 for o in self.opponents.values() if o == who) + sum(
            1 for _, c in self.pending.values() if c == who
        )
        verdict = check_challenge(
            ch, self.cfg.challenge, my_ratings=self.ratings, busy_slots=busy, games_with_challenger=with_them
        )
        tc = ch.get("timeControl") or {}
        desc = (
            f"{ch.get('rated') and 'rated' or 'casual'} {ch.get('speed')} {tc.get('limit', '-')}+{tc.get('increment', '-')} "
            f"{(ch.get('variant') or {}).get('key')} from {who} ({challenger.get('rating', '?')})"
        )
        if verdict.accept:
            logger.info("challenge {}: {}: accepting", cid, desc)
            try:
                self.client.accept_challenge(cid)
                self.pending[cid] = (time.monotonic() + self.cfg.challenge.accept_timeout, who)
            except ApiError as exc:
                logger.warning("challenge {}: accept failed: {}", cid, exc)
        else:
            logger.info("challenge {}: {}: declining, {}", cid, desc, verdict)
            try:
                self.client.decline_challenge(cid, verdict.reason)
            except ApiError as exc:
                logger.warning("challenge {}: decline failed: {}", cid, exc)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for cid, (expires, _) in list(self.pending.items()):
            if now > expires:
                logger.info("challenge {}: accepted but no game started; freeing its slot", cid)
                del self.pending[cid]
        if self._resync_at is not None and now >= self._resync_at:
            self._resync()
        if self.matchmaker is not None:
            self.matchmaker.tick(len(self.runners) + len(self.pending))
