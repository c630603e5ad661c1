"""A local server that speaks the Lichess Bot API, for end-to-end tests.

Written from the OpenAPI spec (lichess-org/api, doc/specs): the same paths, the
same JSON field names (``gameFull``, ``gameState`` with ``moves`` as one UCI string
and ``wtime``/``btime``/``winc``/``binc`` in ms, ``opponentGone`` with
``claimWinInSeconds``, ``ChallengeJson``, ``nowPlaying``), NDJSON streams sent in
HTTP/1.1 chunks with a blank keep-alive line every ``keepalive_s`` seconds, ``400``
for an illegal or out-of-turn move, ``401`` for a missing or unknown token, and
one event stream per token (a new one closes the old one).

The opponents are played by the server (:class:`Opponent`): random or scripted
moves, resignation, draw and takeback offers, leaving, or never moving. The clocks
run as on Lichess: from the second ply on, for the side to move, with the
increment added after each move; a flag ends the game (``outoftime``).

Every request is logged (:class:`Request`) with the token it carried, so tests can
assert on what the bot sent. Faults: :meth:`World.add_fault` (a status such as 429
or 500, a delay, or a dropped connection for matching requests),
:meth:`World.drop_streams`, :meth:`World.stall_streams`, and
:meth:`FakeLichess.restart` (the server goes away and comes back on the same port
with the same games).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import socket
import string
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import chess

LIVE = ("created", "started")
VARIANT_NAMES = {
    "standard": "Standard",
    "fromPosition": "From Position",
    "chess960": "Chess960",
    "atomic": "Atomic",
}


def speed_of(limit_s: int, inc_s: int) -> str:
    total = limit_s + 40 * inc_s
    for bound, name in ((30, "ultraBullet"), (180, "bullet"), (480, "blitz"), (1500, "rapid")):
        if total < bound:
            return name
    return "classical"


def new_id(n: int = 8) -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=n))


@dataclasses.dataclass
class User:
    id: str
    name: str
    title: str | None = None  # "BOT" for bots
    rating: int = 1500
    token: str | None = None
    scopes: str = "bot:play"
    online: bool = True
    games_played: int = 0
    accepts_challenges: bool = True  # for server-driven bots challenged by the bot
    opponent: Opponent | None = None  # how this user plays when the server drives it

    def light(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "name": self.name, "rating": self.rating}
        if self.title:
            d["title"] = self.title
        return d

    def perfs(self) -> dict[str, Any]:
        return {
            s: {"games": 10, "rating": self.rating, "rd": 60, "prog": 0}
            for s in ("bullet", "blitz", "rapid", "classical")
        }


@dataclasses.dataclass
class Opponent:
    """How the server plays a side."""

    moves: str | list[str] = (
        "random"  # "random", "mate" (mate in one when possible), or UCI moves then random
    )
    delay: float = 0.05  # seconds before each move
    resign_at_ply: int | None = None  # resign instead of moving from this ply on
    offer_draw_at_ply: int | None = None  # offer a draw (with the move) at this ply
    takeback_at_ply: int | None = None  # propose a takeback at this ply
    stop_at_ply: int | None = None  # never move from this ply on (flag, abort)
    gone_at_ply: int | None = None  # leave at this ply: opponentGone with claimWinInSeconds
    claim_win_in: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.done_offers: set[str] = set()

    def choose(self, board: chess.Board) -> chess.Move:
        legal = list(board.legal_moves)
        if isinstance(self.moves, list):
            ply = len(board.move_stack)
            for uci in self.moves[ply // 2 : ply // 2 + 1]:
                mv = chess.Move.from_uci(uci)
                if mv in legal:
                    return mv
        if self.moves == "mate":
            for mv in legal:
                board.push(mv)
                mate = board.is_checkmate()
                board.pop()
                if mate:
                    return mv
        return self.rng.choice(legal)


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    token: str | None  # the bearer token it carried
    body: dict[str, str] | str
    at: float
    status: int = 0  # the answer's status (0: none was written, the client had hung up)
    applied: bool = False  # a move the server played


@dataclasses.dataclass
class Fault:
    method: str | None
    path: re.Pattern[str]
    status: int = 0  # answer this status (0: no status fault)
    delay: float = 0.0  # wait this long first
    drop: bool = False  # close the connection without an answer
    times: int = 1
    body: dict[str, Any] = dataclasses.field(default_factory=lambda: {"error": "injected fault"})
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    hits: int = 0


class Game:
    def __init__(
        self,
        gid: str,
        white: User,
        black: User,
        *,
        limit_s: int,
        inc_s: int,
        rated: bool,
        initial_fen: str | None,
        variant: str,
    ) -> None:
        self.id = gid
        self.white, self.black = white, black
        self.initial_fen = initial_fen or "startpos"
        self.board = chess.Board() if self.initial_fen == "startpos" else chess.Board(self.initial_fen)
        self.variant = variant
        self.rated = rated
        self.initial_ms, self.inc_ms = limit_s * 1000, inc_s * 1000
        self.speed = speed_of(limit_s, inc_s)
        self.wtime = self.btime = self.initial_ms
        self.turn_started = time.monotonic()
        self.status = "started"
        self.winner: str | None = None
        self.draw_offer: dict[str, bool] = {"white": False, "black": False}
        self.takeback_offer: dict[str, bool] = {"white": False, "black": False}
        self.events: list[dict[str, Any]] = []  # game stream events after gameFull
        self.created_at = int(time.time() * 1000)
        self.accepted_moves: list[tuple[int, str, str]] = []  # (ply, uci, user id)
        self.gone: dict[str, float] = {}  # user id -> claimable from (monotonic)
        self.chat: list[tuple[str, str, str]] = []  # (room, user, text)
        self.draw_answers: list[tuple[str, str]] = []  # (user id, yes/no)
        self.takeback_answers: list[tuple[str, str]] = []

    def color_of(self, uid: str) -> str | None:
        if uid == self.white.id:
            return "white"
        if uid == self.black.id:
            return "black"
        return None

    def user(self, color: str) -> User:
        return self.white if color == "white" else self.black

    @property
    def turn(self) -> str:
        return "white" if self.board.turn == chess.WHITE else "black"

    @property
    def ply(self) -> int:
        return len(self.board.move_stack)

    def clock_running(self) -> bool:
        return self.status in LIVE and self.ply >= 2

    def times(self) -> tuple[int, int]:
        w, b = self.wtime, self.btime
        if self.clock_running():
            spent = int((time.monotonic() - self.turn_started) * 1000)
            if self.turn == "white":
                w -= spent
            else:
                b -= spent
        return max(0, w), max(0, b)

    def state(self) -> dict[str, Any]:
        w, b = self.times()
        s: dict[str, Any] = {
            "type": "gameState",
            "moves": " ".join(m.uci() for m in self.board.move_stack),
            "wtime": w,
            "btime": b,
            "winc": self.inc_ms,
            "binc": self.inc_ms,
            "status": self.status,
        }
        if self.winner:
            s["winner"] = self.winner
        for c in ("white", "black"):
            if self.draw_offer[c]:
                s[c[0] + "draw"] = True
            if self.takeback_offer[c]:
                s[c[0] + "takeback"] = True
        return s

    def full(self) -> dict[str, Any]:
        def player(u: User) -> dict[str, Any]:
            return {"id": u.id, "name": u.name, "title": u.title, "rating": u.rating, "provisional": False}

        return {
            "type": "gameFull",
            "id": self.id,
            "variant": {
                "key": self.variant,
                "name": VARIANT_NAMES.get(self.variant, self.variant),
                "short": "Std",
            },
            "clock": {"initial": self.initial_ms, "increment": self.inc_ms},
            "speed": self.speed,
            "perf": {"name": self.speed.capitalize()},
            "rated": self.rated,
            "createdAt": self.created_at,
            "white": player(self.white),
            "black": player(self.black),
            "initialFen": self.initial_fen,
            "state": self.state(),
        }

    def info_for(self, uid: str) -> dict[str, Any]:
        """``GameEventInfo`` / a ``nowPlaying`` entry from ``uid``'s side."""
        color = self.color_of(uid) or "white"
        opp = self.user("black" if color == "white" else "white")
        w, b = self.times()
        last = self.board.move_stack[-1].uci() if self.board.move_stack else ""
        info: dict[str, Any] = {
            "fullId": self.id + "abcd",
            "gameId": self.id,
            "id": self.id,
            "fen": self.board.fen(),
            "color": color,
            "lastMove": last,
            "source": "friend",
            "status": {"id": 20, "name": self.status},
            "variant": {"key": self.variant, "name": VARIANT_NAMES.get(self.variant, self.variant)},
            "speed": self.speed,
            "perf": self.speed,
            "rated": self.rated,
            "hasMoved": any(uid == m[2] for m in self.accepted_moves),
            "opponent": {"id": opp.id, "username": opp.name, "rating": opp.rating},
            "isMyTurn": self.turn == color and self.status in LIVE,
            "secondsLeft": (w if color == "white" else b) // 1000,
            "compat": {"bot": True, "board": False},
        }
        if self.winner:
            info["winner"] = self.winner
        return info


class World:
    """Everything the server knows; it outlives a server restart."""

    def __init__(self, *, keepalive_s: float = 0.2) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.keepalive_s = keepalive_s
        self.users: dict[str, User] = {}
        self.games: dict[str, Game] = {}
        self.challenges: dict[str, dict[str, Any]] = {}
        self.declines: dict[str, str] = {}  # challenge id -> reason
        self.events: dict[str, list[dict[str, Any]]] = {}  # user id -> event stream events
        self.event_gen: dict[str, int] = {}  # a new event stream closes the previous one
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.drop_gen = 0  # bumping it drops open streams (see drop_streams)
        self.drop_filter: str | None = None
        self.stall_before = 0.0  # streams opened before this...
        self.stall_until = 0.0  # ...send nothing until this time
        self.stream_connects: dict[str, int] = {}  # "event:<uid>" / "game:<gid>" -> connections
        self.upgraded: list[str] = []

    # -- set-up -------------------------------------------------------------------------------
    def start_game_now(
        self,
        white_id: str,
        black_id: str,
        *,
        limit_s: int = 60,
        inc_s: int = 0,
        initial_fen: str | None = None,
    ) -> Game:
        """A game that starts without a challenge (as an arena pairing does)."""
        with self.lock:
            ch = self.challenge_json(
                new_id(),
                self.users[white_id],
                self.users[black_id],
                limit_s=limit_s,
                inc_s=inc_s,
                rated=True,
                variant="fromPosition" if initial_fen else "standard",
                initial_fen=initial_fen,
                color="white",
                direction="in",
            )
            return self.start_game(ch)

    def add_user(self, uid: str, **kw: Any) -> User:
        u = User(uid, kw.pop("name", uid.capitalize()), **kw)
        with self.lock:
            self.users[uid] = u
            self.events.setdefault(uid, [])
        return u

    def token_user(self, token: str | None) -> User | None:
        if not token:
            return None
        with self.lock:
            return next((u for u in self.users.values() if u.token == token), None)

    def add_fault(self, path: str, *, method: str | None = None, times: int = 1, **kw: Any) -> Fault:
        f = Fault(method, re.compile(path), times=times, **kw)
        with self.lock:
            self.faults.append(f)
        return f

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and (f.method is None or f.method == method) and f.path.search(path):
                    f.times -= 1
                    f.hits += 1
                    return f
        return None

    def drop_streams(self, which: str = "all") -> None:
        """Close open streams abruptly: ``event``, ``game`` or ``all``."""
        with self.lock:
            self.drop_filter = which
            self.drop_gen += 1
            self.changed.notify_all()

    def stall_streams(self, seconds: float) -> None:
        """Open streams go silent (no data, no keep-alive) for ``seconds``."""
        with self.lock:
            now = time.monotonic()
            self.stall_before = now
            self.stall_until = now + seconds

    def push_event(self, uid: str, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.setdefault(uid, []).append(event)
            self.changed.notify_all()

    def push_game(self, game: Game, event: dict[str, Any] | None = None) -> None:
        with self.lock:
            game.events.append(event if event is not None else game.state())
            self.changed.notify_all()

    # -- challenges and games --------------------------------------------------------------------
    def challenge_json(
        self,
        cid: str,
        challenger: User,
        dest: User,
        *,
        limit_s: int | None,
        inc_s: int | None,
        rated: bool,
        variant: str,
        initial_fen: str | None,
        color: str,
        direction: str,
        days: int | None = None,
    ) -> dict[str, Any]:
        if limit_s is not None and inc_s is not None:
            tc: dict[str, Any] = {
                "type": "clock",
                "limit": limit_s,
                "increment": inc_s,
                "show": f"{limit_s // 60}+{inc_s}",
            }
            speed = speed_of(limit_s, inc_s)
        elif days is not None:
            tc, speed = {"type": "correspondence", "daysPerTurn": days}, "correspondence"
        else:
            tc, speed = {"type": "unlimited"}, "correspondence"
        ch: dict[str, Any] = {
            "id": cid,
            "url": f"https://lichess.org/{cid}",
            "status": "created",
            "challenger": {**challenger.light(), "online": True, "provisional": False},
            "destUser": {**dest.light(), "online": True, "provisional": False},
            "variant": {"key": variant, "name": VARIANT_NAMES.get(variant, variant), "short": "Std"},
            "rated": rated,
            "speed": speed,
            "timeControl": tc,
            "color": color,
            "finalColor": "white" if color == "random" else color,
            "perf": {"icon": "", "name": speed.capitalize()},
            "direction": direction,
        }
        if initial_fen:
            ch["initialFen"] = initial_fen
        return ch

    def send_challenge(
        self,
        challenger_id: str,
        dest_id: str,
        *,
        limit_s: int | None = 60,
        inc_s: int | None = 0,
        rated: bool = False,
        variant: str = "standard",
        initial_fen: str | None = None,
        color: str = "random",
        days: int | None = None,
    ) -> str:
        """A server-driven user challenges ``dest_id`` (the bot); returns the challenge id."""
        with self.lock:
            cid = new_id()
            challenger, dest = self.users[challenger_id], self.users[dest_id]
            ch = self.challenge_json(
                cid,
                challenger,
                dest,
                limit_s=limit_s,
                inc_s=inc_s,
                rated=rated,
                variant=variant,
                initial_fen=initial_fen,
                color=color,
                direction="in",
                days=days,
            )
            self.challenges[cid] = ch
            self.push_event(
                dest_id, {"type": "challenge", "challenge": ch, "compat": {"bot": True, "board": False}}
            )
            return cid

    def start_game(self, ch: dict[str, Any]) -> Game:
        with self.lock:
            challenger = self.users[ch["challenger"]["id"]]
            dest = self.users[ch["destUser"]["id"]]
            color = ch["finalColor"]  # the challenger's colour
            white, black = (challenger, dest) if color == "white" else (dest, challenger)
            tc = ch["timeControl"]
            g = Game(
                ch["id"],
                white,
                black,
                limit_s=tc.get("limit", 0),
                inc_s=tc.get("increment", 0),
                rated=ch["rated"],
                initial_fen=ch.get("initialFen"),
                variant=ch["variant"]["key"],
            )
            self.games[g.id] = g
            ch["status"] = "accepted"
            for u in (white.id, black.id):
                self.push_event(u, {"type": "gameStart", "game": g.info_for(u)})
            return g

    def finish(self, g: Game, status: str, winner: str | None) -> None:
        with self.lock:
            if g.status not in LIVE:
                return
            g.status, g.winner = status, winner
            g.wtime, g.btime = g.times()
            g.draw_offer = {"white": False, "black": False}
            self.push_game(g)
            for u in (g.white, g.black):
                u.games_played += 1
                self.push_event(u.id, {"type": "gameFinish", "game": g.info_for(u.id)})

    def apply_move(self, g: Game, uid: str, uci: str, *, offering_draw: bool = False) -> str | None:
        """Play ``uci`` for ``uid``; an error text for a 400, or None."""
        with self.lock:
            color = g.color_of(uid)
            if color is None:
                return "Not your game"
            if g.status not in LIVE or g.turn != color:
                return "Not your turn, or game already over"
            try:
                move = g.board.parse_uci(uci)
            except ValueError:
                return f"Invalid move {uci} in {g.board.fen()}"
            now = time.monotonic()
            if g.clock_running():
                spent = int((now - g.turn_started) * 1000)
                left = (g.wtime if color == "white" else g.btime) - spent
                if left <= 0:
                    self.finish(g, "outoftime", "black" if color == "white" else "white")
                    return "Not your turn, or game already over"
                left += g.inc_ms
                if color == "white":
                    g.wtime = left
                else:
                    g.btime = left
            g.board.push(move)
            g.accepted_moves.append((g.ply - 1, move.uci(), uid))
            g.turn_started = now
            other = "black" if color == "white" else "white"
            g.draw_offer[other] = False  # moving declines a pending offer
            g.takeback_offer = {"white": False, "black": False}
            if offering_draw:
                g.draw_offer[color] = True
            outcome = g.board.outcome(claim_draw=False)
            if outcome is not None:
                if outcome.termination == chess.Termination.CHECKMATE:
                    self.finish(g, "mate", color)
                elif outcome.termination == chess.Termination.STALEMATE:
                    self.finish(g, "stalemate", None)
                else:
                    self.finish(g, "draw", None)
                return None
            self.push_game(g)
            return None

    # -- the server's own players ---------------------------------------------------------------
    def drive(self) -> None:
        """One tick: flags, and the server-driven opponents' moves."""
        with self.lock:
            now = time.monotonic()
            for g in list(self.games.values()):
                if g.status not in LIVE:
                    continue
                w, b = g.times()
                if g.clock_running() and min(w, b) <= 0:
                    loser = "white" if w <= 0 else "black"
                    self.finish(g, "outoftime", "black" if loser == "white" else "white")
                    continue
                side = g.user(g.turn)
                opp = side.opponent
                if opp is None or side.token is not None:
                    continue  # the bot's side
                ply = g.ply
                if opp.gone_at_ply is not None and ply >= opp.gone_at_ply:
                    if side.id not in g.gone:
                        g.gone[side.id] = now + opp.claim_win_in
                        self.push_game(
                            g, {"type": "opponentGone", "gone": True, "claimWinInSeconds": opp.claim_win_in}
                        )
                    continue
                if opp.stop_at_ply is not None and ply >= opp.stop_at_ply:
                    continue
                if now - g.turn_started < opp.delay:
                    continue
                if opp.resign_at_ply is not None and ply >= opp.resign_at_ply:
                    self.finish(g, "resign", "black" if g.turn == "white" else "white")
                    continue
                if (
                    opp.takeback_at_ply is not None
                    and ply >= opp.takeback_at_ply
                    and "takeback" not in opp.done_offers
                ):
                    opp.done_offers.add("takeback")
                    g.takeback_offer[g.turn] = True
                    self.push_game(g)
                offer = (
                    opp.offer_draw_at_ply is not None
                    and ply >= opp.offer_draw_at_ply
                    and "draw" not in opp.done_offers
                )
                if offer:
                    opp.done_offers.add("draw")
                self.apply_move(g, side.id, opp.choose(g.board).uci(), offering_draw=offer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients (the bot) hang up mid-request on purpose in these tests


class FakeLichess:
    """The HTTP server around a :class:`World`; ``url`` is its base URL."""

    def __init__(self, world: World | None = None, *, port: int = 0) -> None:
        self.world = world or World()
        self.port = port
        self.httpd: _Server | None = None
        self._serve: threading.Thread | None = None
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self.down = threading.Event()  # set while "restarting": streams end, sockets close
        self.open_sockets: set[socket.socket] = set()
        self._sock_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeLichess:
        self.down.clear()
        handler = type("Handler", (_Handler,), {"server_obj": self})
        self.httpd = _Server(("127.0.0.1", self.port), handler)
        self.port = self.httpd.server_address[1]
        self._serve = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serve.start()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.02):
            self.world.drive()

    def _close_all(self) -> None:
        self.down.set()
        with self.world.lock:
            self.world.changed.notify_all()
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._sock_lock:
            for s in list(self.open_sockets):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    s.close()
                except OSError:
                    pass
            self.open_sockets.clear()

    def restart(self, downtime: float = 0.5) -> None:
        """Go away (every connection closed, nothing listening) and come back."""
        self._close_all()
        time.sleep(downtime)
        self.start()

    def stop(self) -> None:
        self._stop.set()
        if self.httpd is not None:
            self._close_all()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_obj: FakeLichess

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server_obj._sock_lock:
            self.server_obj.open_sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server_obj._sock_lock:
                self.server_obj.open_sockets.discard(self.connection)

    @property
    def world(self) -> World:
        return self.server_obj.world

    # -- plumbing --------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _body(self) -> dict[str, str] | str:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n).decode() if n else ""
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype and raw:
            data = json.loads(raw)
            return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in data.items()}
        if "x-www-form-urlencoded" in ctype:
            return {k: v[0] for k, v in parse_qs(raw).items()}
        return raw

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.req.status = status

    def _send_ndjson(self, items: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(i) + "\n" for i in items).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.req.status = 200

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        body = self._body()
        self.req = Request(method, path, query, token, body, time.monotonic())
        with self.world.lock:
            self.world.requests.append(self.req)
        fault = self.world.take_fault(method, path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                self.req.status = -1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.status:
                self._send_json(fault.status, fault.body, fault.headers)
                return
        try:
            self._route(method, path, query, token, body)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _route(self, method: str, path: str, query: dict[str, str], token: str | None, body: Any) -> None:
        w = self.world
        if method == "POST" and path == "/api/token/test":
            tokens = [t for t in str(body).split(",") if t]
            out: dict[str, Any] = {}
            for t in tokens:
                u = w.token_user(t)
                out[t] = {"userId": u.id, "scopes": u.scopes, "expires": None} if u else None
            self._send_json(200, out)
            return
        if method == "GET" and path == "/api/bot/online":
            nb = int(query.get("nb", 100))
            with w.lock:
                bots = [
                    {"id": u.id, "username": u.name, "title": "BOT", "perfs": u.perfs()}
                    for u in w.users.values()
                    if u.title == "BOT" and u.online
                ][:nb]
            self._send_ndjson(bots)
            return
        me = w.token_user(token)
        if me is None:
            self._send_json(401, {"error": "No such token"})
            return
        if method == "GET" and path == "/api/account":
            self._send_json(
                200,
                {
                    "id": me.id,
                    "username": me.name,
                    "title": me.title,
                    "perfs": me.perfs(),
                    "createdAt": 1700000000000,
                },
            )
            return
        if method == "GET" and path == "/api/account/playing":
            with w.lock:
                now = [g.info_for(me.id) for g in w.games.values() if g.status in LIVE and g.color_of(me.id)]
            self._send_json(200, {"nowPlaying": now, "nbMyTurn": sum(1 for g in now if g["isMyTurn"])})
            return
        if method == "POST" and path == "/api/bot/account/upgrade":
            if me.title == "BOT":
                self._send_json(400, {"error": "This account is already a bot account"})
            elif me.games_played:
                self._send_json(400, {"error": "No, you can't upgrade an account that has played games"})
            else:
                me.title = "BOT"
                w.upgraded.append(me.id)
                self._send_json(200, {"ok": True})
            return
        if method == "GET" and path == "/api/stream/event":
            self._event_stream(me)
            return
        m = re.fullmatch(r"/api/bot/game/stream/(\w+)", path)
        if method == "GET" and m:
            self._game_stream(me, m.group(1))
            return
        m = re.fullmatch(r"/api/challenge/(\w+)/(accept|decline|cancel)", path)
        if method == "POST" and m:
            self._challenge_action(me, m.group(1), m.group(2), body)
            return
        m = re.fullmatch(r"/api/challenge/(\w+)", path)
        if method == "POST" and m:
            self._create_challenge(me, m.group(1).lower(), body)
            return
        m = re.fullmatch(
            r"/api/bot/game/(\w+)/(move/\w+|chat|abort|resign|draw/\w+|takeback/\w+|claim-victory)", path
        )
        if method == "POST" and m:
            self._game_action(me, m.group(1), m.group(2), query, body)
            return
        self._send_json(404, {"error": "Not found"})

    # -- streams --------------------------------------------------------------------------------
    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.req.status = 200

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _abort(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _follow(
        self, kind: str, source: list[dict[str, Any]], start: int, *, done: Any, still_mine: Any
    ) -> None:
        """Send ``source[start:]`` as it grows, with keep-alives; stop on ``done()``."""
        w = self.world
        opened = time.monotonic()
        drop_gen = w.drop_gen
        sent = start
        last_write = time.monotonic()
        while True:
            with w.lock:
                if self.server_obj.down.is_set() or (
                    w.drop_gen != drop_gen and w.drop_filter in (kind, "all")
                ):
                    self._abort()
                    return
                if not still_mine():
                    self._end_chunks()
                    return
                stalled = opened < w.stall_before and time.monotonic() < w.stall_until
                pending = [] if stalled else source[sent:]
                sent += len(pending)
                finished = done() and not stalled and sent >= len(source)
                if not pending and not finished:
                    w.changed.wait(timeout=0.05)
            for ev in pending:
                self._chunk(json.dumps(ev) + "\n")
                last_write = time.monotonic()
            if finished:
                self._end_chunks()
                return
            if not stalled and time.monotonic() - last_write >= w.keepalive_s:
                self._chunk("\n")
                last_write = time.monotonic()

    def _event_stream(self, me: User) -> None:
        w = self.world
        with w.lock:
            gen = w.event_gen.get(me.id, 0) + 1
            w.event_gen[me.id] = gen
            key = f"event:{me.id}"
            w.stream_connects[key] = w.stream_connects.get(key, 0) + 1
            events = w.events.setdefault(me.id, [])
            start = len(events)
            # "When the stream opens, all current challenges and games are sent."
            snapshot = [
                {"type": "gameStart", "game": g.info_for(me.id)}
                for g in w.games.values()
                if g.status in LIVE and g.color_of(me.id)
            ] + [
                {"type": "challenge", "challenge": c}
                for c in w.challenges.values()
                if c["status"] == "created" and c["destUser"]["id"] == me.id
            ]
        self._start_stream()
        for ev in snapshot:
            self._chunk(json.dumps(ev) + "\n")
        self._follow(
            "event", events, start, done=lambda: False, still_mine=lambda: w.event_gen.get(me.id) == gen
        )

    def _game_stream(self, me: User, gid: str) -> None:
        w = self.world
        with w.lock:
            g = w.games.get(gid)
            if g is None:
                self._send_json(404, {"error": "Not found"})
                return
            key = f"game:{gid}"
            w.stream_connects[key] = w.stream_connects.get(key, 0) + 1
            full = g.full()
            start = len(g.events)
            over = g.status not in LIVE
        self._start_stream()
        self._chunk(json.dumps(full) + "\n")
        if over:
            self._end_chunks()
            return
        self._follow("game", g.events, start, done=lambda: g.status not in LIVE, still_mine=lambda: True)

    # -- actions --------------------------------------------------------------------------------
    def _challenge_action(self, me: User, cid: str, action: str, body: Any) -> None:
        w = self.world
        with w.lock:
            ch = w.challenges.get(cid)
            if ch is None or ch["status"] != "created":
                self._send_json(404, {"error": "Challenge not found"})
                return
            if action == "cancel":
                if ch["challenger"]["id"] != me.id:
                    self._send_json(404, {"error": "Challenge not found"})
                    return
                ch["status"] = "canceled"
                self._send_json(200, {"ok": True})
                return
            if ch["destUser"]["id"] != me.id:
                self._send_json(404, {"error": "Challenge not found"})
                return
            if action == "accept":
                w.start_game(ch)
                self._send_json(200, {"ok": True})
                return
            reason = body.get("reason", "generic") if isinstance(body, dict) else "generic"
            from bot.challenges import DECLINE_REASONS

            if reason not in DECLINE_REASONS:
                self._send_json(400, {"error": f"invalid reason {reason!r}"})
                return
            ch["status"] = "declined"
            w.declines[cid] = reason
            declined = {**ch, "declineReason": "declined", "declineReasonKey": reason.lower()}
            w.push_event(ch["challenger"]["id"], {"type": "challengeDeclined", "challenge": declined})
            self._send_json(200, {"ok": True})

    def _create_challenge(self, me: User, dest_id: str, body: Any) -> None:
        w = self.world
        body = body if isinstance(body, dict) else {}
        with w.lock:
            dest = w.users.get(dest_id)
            if dest is None:
                self._send_json(400, {"error": f"{dest_id} not found"})
                return
            limit = int(body["clock.limit"]) if "clock.limit" in body else None
            inc = int(body["clock.increment"]) if "clock.increment" in body else None
            cid = new_id()
            color = random.choice(["white", "black"])
            ch = w.challenge_json(
                cid,
                me,
                dest,
                limit_s=limit,
                inc_s=inc,
                rated=body.get("rated") == "true",
                variant="standard",
                initial_fen=None,
                color="random",
                direction="out",
            )
            ch["finalColor"] = color
            w.challenges[cid] = ch
            w.push_event(me.id, {"type": "challenge", "challenge": ch})
            self._send_json(200, ch)
        answer = dest.accepts_challenges

        def respond() -> None:
            time.sleep(0.1)
            with w.lock:
                if ch["status"] != "created":
                    return
                if answer:
                    w.start_game(ch)
                else:
                    ch["status"] = "declined"
                    w.declines[cid] = "later"
                    w.push_event(
                        me.id,
                        {
                            "type": "challengeDeclined",
                            "challenge": {**ch, "declineReason": "later", "declineReasonKey": "later"},
                        },
                    )

        threading.Thread(target=respond, daemon=True).start()

    def _game_action(self, me: User, gid: str, action: str, query: dict[str, str], body: Any) -> None:
        w = self.world
        with w.lock:
            g = w.games.get(gid)
            if g is None:
                self._send_json(404, {"error": "Not found"})
                return
            color = g.color_of(me.id)
            if color is None:
                self._send_json(404, {"error": "Not your game"})
                return
            other = "black" if color == "white" else "white"
            if action.startswith("move/"):
                err = w.apply_move(g, me.id, action[5:], offering_draw=query.get("offeringDraw") == "true")
                self.req.applied = err is None
                if err:
                    self._send_json(400, {"error": err})
                else:
                    self._send_json(200, {"ok": True})
                return
            if action == "chat":
                body = body if isinstance(body, dict) else {}
                room, text = body.get("room", "player"), body.get("text", "")
                g.chat.append((room, me.id, text))
                w.push_game(g, {"type": "chatLine", "room": room, "username": me.name, "text": text})
                self._send_json(200, {"ok": True})
                return
            if g.status not in LIVE:
                self._send_json(400, {"error": "The game is over"})
                return
            if action == "abort":
                if g.ply >= 2:
                    self._send_json(400, {"error": "This game can no longer be aborted"})
                else:
                    w.finish(g, "aborted", None)
                    self._send_json(200, {"ok": True})
            elif action == "resign":
                w.finish(g, "resign", other)
                self._send_json(200, {"ok": True})
            elif action.startswith("draw/"):
                answer = action[5:]
                g.draw_answers.append((me.id, answer))
                if answer in ("yes", "true"):
                    if g.draw_offer[other]:
                        w.finish(g, "draw", None)
                    else:
                        g.draw_offer[color] = True
                        w.push_game(g)
                else:
                    g.draw_offer[other] = False
                    w.push_game(g)
                self._send_json(200, {"ok": True})
            elif action.startswith("takeback/"):
                answer = action[9:]
                g.takeback_answers.append((me.id, answer))
                if answer in ("yes", "true"):
                    self._send_json(400, {"error": "takebacks are not supported by this test server"})
                    return
                g.takeback_offer[other] = False
                w.push_game(g)
                self._send_json(200, {"ok": True})
            elif action == "claim-victory":
                opp_id = g.user(other).id
                if opp_id in g.gone and time.monotonic() >= g.gone[opp_id]:
                    w.finish(g, "timeout", color)
                    self._send_json(200, {"ok": True})
                else:
                    self._send_json(400, {"error": "You cannot claim the win now"})
