"""The engine: one thread owns MLX; callers submit requests and read events from a TurnHandle.

caller threads                      engine thread (owns MLX)
--------------                      ------------------------
submit(request) --> inbox queue --> BatchScheduler (batched) or serve_alone (one at a time)
handle.events() <-- handle queue <-- Turn (engine/turn.py): TurnStarted, TurnChunk..., TurnFinished
handle.cancel() --> threading.Event checked after every token
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backend import attention_paths, current_backend, prefill_step_size
from engine.errors import EngineBusy, EngineClosed, EngineError, ModelLoadError
from engine.events import TurnEvent, TurnFinished
from engine.gguf_import import Progress
from engine.handle import TurnHandle
from engine.kv.policy import AgentPolicy
from engine.kv.stats import HotView, KVOverview, MemoryStats, StoredBlock
from engine.loader import LoadedModel, ModelInfo
from engine.model_loading import SwapLoader, load_checked
from engine.requests import GenerationRequest
from engine.sampling import repair_random_state
from engine.settings import Settings

log = logging.getLogger(__name__)

_STOP = object()
# How often the engine thread drops caches idle past their retention (engine/kv/policy.py)
SWEEP_S = 5.0


@dataclass
class _Job:
    handle: TurnHandle


@dataclass
class _Call:
    """A function to run on the engine thread (it may touch MLX and the KV memory)."""

    function: Callable[[Engine], Any]
    done: threading.Event
    result: Any = None
    error: BaseException | None = None
    # Runs only when no request is running (a model swap), instead of between two decode steps.
    exclusive: bool = False
    # Publishes the hot tier after it (a housekeeping call that changed nothing does not)
    publish: bool = True


class Engine:
    """Loads the model on its own thread and runs requests from a queue: batched together (continuous
    batching, engine/scheduler.py) when the model's cache kind allows, else one at a time."""

    def __init__(self, settings: Settings, progress: Progress | None = None):
        from engine.process import setup_process

        setup_process()  # a no-op when the program's entry point did it, as it should (engine/process.py)
        self.settings = settings
        self._progress = progress
        self._inbox: queue.Queue[_Job | object] = queue.Queue()
        self._ready = threading.Event()
        self._load_error: EngineError | None = None
        self._loaded: LoadedModel | None = None
        self._thread = threading.Thread(target=self._run, name="agent-memory-engine", daemon=True)
        self._closed = False
        # Set by the engine thread once it takes no more jobs; checked under the lock by every put, so
        # a job is either refused or seen by the thread's last drain of the inbox.
        self._inbox_lock = threading.Lock()
        self._inbox_closed = False
        self._stopped = threading.Event()  # set once the engine thread has finished its work
        self._stream = None  # an MLX stream owned by the engine thread
        self.memory = None  # KVMemory, created on the engine thread once the model is loaded
        self.model_id = settings.mlx_model_id
        self.state = "loading"  # "loading" | "ready" | "swapping" | "failed" | "closed"
        self._busy = False  # a request is running on the engine thread
        self._swap_lock = threading.Lock()
        self._loader: SwapLoader | None = None
        self._hot_view: HotView | None = None  # the hot tier as the engine thread last saw it
        self._scheduler = None  # BatchScheduler, when the model batches
        self._deferred: list[_Call] = []  # exclusive calls waiting for the running batch to drain

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> Engine:
        self._thread.start()
        # Its own thread, not a timed wait of the engine thread's: a thread that holds MLX state must never
        # wake while the interpreter exits (engine/engine.py, _run's end)
        threading.Thread(target=self._sweep_now_and_then, name="agent-memory-sweeper", daemon=True).start()
        if wait:
            self.wait_ready()
        return self

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def wait_ready(self, timeout: float | None = None) -> ModelInfo:
        """Block until the model is loaded; re-raise the load error in the caller's thread."""
        if not self._ready.wait(timeout):
            raise TimeoutError("the model is still loading")
        if self._load_error is not None:
            raise self._load_error
        return self.info

    @property
    def load_error(self) -> str | None:
        """Why the engine cannot serve (state "failed"): its model failed to load, or the engine thread
        stopped after an internal error."""
        return str(self._load_error) if self._load_error is not None else None

    @property
    def info(self) -> ModelInfo:
        if self._loaded is None:
            raise EngineError("the model is not loaded yet")
        return self._loaded.info

    @property
    def tokenizer(self):
        return self._loaded.tokenizer if self._loaded else None

    def close(self, timeout: float = 30.0) -> None:
        if self._closed:
            return
        self._closed = True
        self.state = "closed"
        self._inbox.put(_STOP)
        if self._thread.is_alive():
            self._stopped.wait(timeout)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_event: Callable[[TurnEvent], None] | None = None) -> TurnHandle:
        """Queue a request; `on_event` (optional) is called on the engine thread with each event."""
        if self._closed:
            raise EngineClosed(self.load_error if self.state == "failed" else "the engine is shut down")
        if self.waiting_count >= self.settings.max_queue:
            raise EngineBusy(
                f"the queue is full ({self.settings.max_queue} requests waiting, SEMANTIC_MAX_QUEUE); retry shortly"
            )
        handle = TurnHandle(request, on_event)
        self._enqueue(_Job(handle))
        return handle

    def _enqueue(self, job: _Job | _Call) -> None:
        with self._inbox_lock:
            if self._inbox_closed:
                raise EngineClosed(self.load_error if self.state == "failed" else "the engine is shut down")
            self._inbox.put(job)

    def generate(self, request: GenerationRequest) -> TurnFinished:
        return self.submit(request).result()

    def call(self, function: Callable[[Engine], Any], timeout: float | None = None, exclusive: bool = False) -> Any:
        """Run `function(engine)` on the engine thread between decode steps and return its result;
        `exclusive` waits until no request is running."""
        if self._closed:
            raise EngineClosed("the engine is shut down")
        job = _Call(function, threading.Event(), exclusive=exclusive)
        self._enqueue(job)
        if not job.done.wait(timeout):
            raise TimeoutError("the engine is busy")
        if job.error is not None:
            raise job.error
        return job.result

    @property
    def kv_enabled(self) -> bool:
        """Turns are kept for reuse (KV memory on and this model's cache kind storable)."""
        return self.memory is not None and self.memory.enabled

    @property
    def waiting_count(self) -> int:
        """Requests accepted but not running yet."""
        scheduler = self._scheduler
        return self._inbox.qsize() + (len(scheduler.waiting) if scheduler is not None else 0)

    @property
    def running_count(self) -> int:
        scheduler = self._scheduler
        return len(scheduler.active) if scheduler is not None else int(self._busy)

    @property
    def queue_depth(self) -> int:
        """Requests waiting or running."""
        return self.waiting_count + self.running_count

    @property
    def batching(self) -> bool:
        return self._scheduler is not None

    def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens of `request` as the current model would see them (no MLX: any thread)."""
        from engine.prompt import render_prompt

        if self._loaded is None:
            raise EngineError("the model is not loaded yet")
        return len(render_prompt(self._loaded, request))

    def kv_overview(self, sessions: bool = True) -> KVOverview:
        """The KV memory without waiting for the engine thread: hot tier as of the last turn, warm from
        disk; `sessions=False` leaves out the per-session warm summaries (a scan of every session's chain)."""
        memory = self.memory
        if memory is None or not memory.enabled:
            return KVOverview(enabled=False)
        return KVOverview(
            enabled=True,
            fingerprint=memory.fingerprint,
            policies=memory.policies,  # replaced as a whole, never changed in place
            hot=self._hot_view or HotView(),  # empty until the engine thread first publishes
            warm=memory.warm.stats(dtype=memory.disk_dtype),
            warm_sessions=memory.warm.session_summaries() if sessions else {},
            shared=memory.shared.stats() if memory.shared is not None else None,
        )

    def agent_blocks(self, session_id: str) -> list[StoredBlock]:
        """The session's warm block chain under the current model (see WarmTier.session_blocks); any thread."""
        memory = self.memory
        if memory is None or not memory.enabled:
            return []
        return memory.warm.session_blocks(memory.fingerprint, session_id)

    def swap(self, model_id: str, progress: Progress | None = None) -> ModelInfo:
        """Load `model_id` beside the serving model, then switch to it between two requests.

        Requests submitted before the switch finish on the old model; later ones run on the new.
        KV caches stay keyed by model fingerprint, so swapping back finds them again. A failed load
        raises ModelLoadError and leaves the old model serving.
        """
        if self._closed:
            raise EngineClosed("the engine is shut down")
        if not self._swap_lock.acquire(blocking=False):
            raise EngineError("another model swap is in progress; try again when it is done")
        try:
            self.state = "swapping"
            if self._loader is None:
                self._loader = SwapLoader()
            loaded = self._loader.load(model_id, self.settings, progress or self._progress)
            self.call(lambda engine: engine._install(loaded, model_id), exclusive=True)
            return loaded.info
        finally:
            self.state = "ready" if self._loaded is not None else "failed"
            self._swap_lock.release()

    def memory_stats(self) -> MemoryStats:
        """The KV memory's figures, the warm tier's once every finished turn is on disk."""
        return self._after_writes(lambda memory: memory.stats(), MemoryStats(enabled=False))

    def forget_session(self, session_id: str) -> bool:
        """Drop a session's KV caches (hot and warm); shared blocks stay while others use them. Whether
        it had any: a turn that just ended counts, since this runs after it on the engine thread."""
        return bool(self._after_writes(lambda memory: memory.forget(session_id), False))

    def fork_session(self, session_id: str, new_session_id: str) -> int:
        """Give `new_session_id` the KV caches of `session_id` (see KVMemory.fork); how many warm
        snapshots it shares (0: none stored, or the cache dir is another process's)."""
        return int(self._after_writes(lambda memory: memory.fork(session_id, new_session_id), 0))

    def rename_session(self, session_id: str, new_session_id: str) -> int:
        """Move the KV caches and policy of `session_id` to `new_session_id` (see KVMemory.rename); how
        many warm snapshots moved."""
        return int(self._after_writes(lambda memory: memory.rename(session_id, new_session_id), 0))

    def export_agent(self, session_id: str, agent_id: str, transcript: dict | None, path: Path):
        """Write the agent file of `session_id` (named `agent_id` in it) to `path`: its transcript and its
        cache under the current model (engine/kv/agent_file.py); returns its manifest."""
        memory = self.memory
        if memory is None or not memory.enabled:  # no cache: the transcript alone
            from engine.kv.agent_transfer import export_agent

            with path.open("wb") as target:
                return export_agent(
                    None, self.info.fingerprint, session_id, agent_id, self.model_id, transcript, target
                )
        return self._after_writes(
            lambda memory: memory.export_agent(session_id, agent_id, self.model_id, transcript, path)
        )

    def import_target(self, tenant: str = ""):
        """What an imported agent's cache must fit (engine/kv/agent_transfer.py, Target); None when no cache
        can be stored here (KV memory off, or another process owns the cache dir)."""
        memory = self.memory
        if memory is None or not memory.enabled or not memory.warm.writable:
            return None
        return memory.import_target(tenant)

    def import_agent(self, plan) -> int:
        """Store a checked import's cache (engine/kv/agent_transfer.py, ImportPlan); how many blocks were new."""
        return int(self._after_writes(lambda memory: memory.import_agent(plan), 0))

    def set_agent_policy(self, session_id: str, **changes) -> AgentPolicy:
        """The user changes what is kept of an agent's caches: `pinned`, `retention_s` (engine/kv/policy.py;
        a retention set here is no longer changed by clients' hints); returns the policy. Without KV memory
        there is nothing to keep: EngineError."""
        memory = self.memory
        if memory is None or not memory.enabled:
            raise EngineError("KV memory is off: there are no caches to pin or expire")
        if "retention_s" in changes:
            changes = {**changes, "retention_by_user": True}
        return self.call(lambda engine: engine.memory.set_policy(session_id, **changes))

    def check_integrity(self) -> None:
        """Raise AssertionError if a KV memory invariant is broken (tests call it after each step)."""
        self._after_writes(lambda memory: memory.check_integrity())

    def flush(self) -> None:
        """Wait until every finished turn's KV is on disk."""
        self._after_writes(lambda memory: memory.flush())

    def _after_writes(self, start: Callable[[Any], Future], default: Any = None) -> Any:
        """`start(memory)` on the engine thread hands a task to the KV writer, behind the turns' writes;
        the caller waits for its result here, so the engine thread keeps serving while the disk catches up."""
        pending = self.call(lambda engine: start(engine.memory) if engine.memory else None)
        return pending.result() if pending is not None else default

    # -- engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        import mlx.core as mx

        # Every MLX call on this thread runs on a stream it owns: evaluating on the default or on
        # mlx-lm's thread-local stream off the main thread aborts the process at exit.
        self._stream = mx.new_stream(mx.default_device())
        with mx.stream(self._stream), current_backend().engine_thread(self.settings):
            self._load()
            try:
                stopping = False
                while not stopping or self._has_work():
                    stopping = self._take_jobs(block=not self._has_work()) or stopping
                    if self._scheduler is not None:
                        self._advance_batch()
            except Exception:  # noqa: BLE001 - a bug: fail every request now instead of leaving them waiting
                log.exception("the engine thread failed; its requests fail and the engine stops")
                self._closed, self.state = True, "failed"
                self._load_error = EngineError("the engine stopped after an internal error (see its log); restart it")
                if self._scheduler is not None:
                    for handle in self._scheduler.waiting:
                        handle.fail(str(self._load_error), "internal")
                    self._scheduler.waiting.clear()
                    self._scheduler.fail_all(str(self._load_error))
            with self._inbox_lock:
                self._inbox_closed = True
            self._fail_waiting_requests()
            # The thread never exits (see below): drop everything it holds, and give MLX's buffer
            # cache back, or every closed engine keeps its model and caches in memory.
            self._drop_model()
            mx.synchronize()
            mx.clear_cache()
        self._stopped.set()
        # The thread parks instead of exiting: exiting runs MLX's thread-local compile-cache
        # destructor without the GIL, which crashes the process (mlx 0.32). As a daemon it never
        # blocks interpreter exit.
        threading.Event().wait()

    def _drop_model(self) -> None:
        """Close the scheduler and the KV memory (every finished turn reaches disk) and let go of the model."""
        if self._scheduler is not None:
            self._scheduler.close()
        if self.memory is not None:
            self.memory.close()
        self._scheduler = self.memory = self._loaded = self._hot_view = None

    def _has_work(self) -> bool:
        return bool(self._deferred) or (self._scheduler is not None and self._scheduler.busy)

    def _take_jobs(self, block: bool) -> bool:
        """Move what arrived into the engine: requests to the batch (or run them), calls run now or
        after the batch drains. Returns True once the engine is asked to stop."""
        stopping = False
        while True:
            try:
                job = self._inbox.get(block=block)
            except queue.Empty:
                return stopping
            block = False
            if job is _STOP:
                stopping = True
            elif isinstance(job, _Call):
                if job.exclusive and self._scheduler is not None and self._scheduler.active:
                    self._deferred.append(job)
                else:
                    self._run_call(job)
            elif self._scheduler is not None:
                self._scheduler.waiting.append(job.handle)
            else:
                self._serve(job.handle)

    def _advance_batch(self) -> None:
        scheduler = self._scheduler
        if self._deferred:  # a swap waits: admit nothing new, run it once the batch is empty
            if not scheduler.active:
                for job in self._deferred:
                    self._run_call(job)
                self._deferred.clear()
                return
        else:
            began = time.perf_counter()
            scheduler.admit()
            if log.isEnabledFor(logging.DEBUG) and time.perf_counter() - began > 1e-3:
                log.debug("admit: %.1f ms, %d running", (time.perf_counter() - began) * 1e3, len(scheduler.active))
        try:
            scheduler.step()
        except Exception as exc:  # noqa: BLE001 - fail the running requests, keep serving
            log.exception("a batch step failed")
            scheduler.fail_all(f"generation failed: {exc}")
        if not scheduler.active:
            self._publish()

    def _run_call(self, job: _Call) -> None:
        try:
            job.result = job.function(self)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            job.error = exc
            repair_random_state()
        finally:
            try:
                if job.publish:
                    self._publish()
            finally:
                job.done.set()  # the caller never waits forever, whatever failed

    def _fail_waiting_requests(self) -> None:
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Call):
                job.error = EngineClosed("the engine shut down")
                job.done.set()
            elif job is not _STOP:
                job.handle.fail("the engine shut down", "internal")

    def _load(self) -> None:
        try:
            self._install(load_checked(self.settings.mlx_model_id, self.settings, self._progress), self.model_id)
        except EngineError as exc:
            self._load_error = exc
        except Exception as exc:  # noqa: BLE001 - a bug while starting: fail the engine, never leave callers waiting
            log.exception("the engine failed to start")
            self._drop_model()
            self._load_error = ModelLoadError(f"the engine failed to start: {exc}")
        finally:
            self.state = "ready" if self._loaded is not None else "failed"
            self._ready.set()

    def _install(self, loaded: LoadedModel, model_id: str) -> None:
        """Engine thread: serve `loaded` from now on, with a KV memory keyed by its fingerprint."""
        if self.memory is not None:
            self.memory.close()  # every finished turn of the old model reaches disk first
            self.memory = None
        self._loaded, self.model_id = loaded, model_id
        if self.settings.kv_memory:
            from engine.kv.memory import KVMemory

            self.memory = KVMemory(self.settings, loaded.info.fingerprint, loaded.model)
        current_backend().after_install(loaded, self.settings)
        self._install_scheduler(loaded)
        if current_backend().warm_up_at_load and self._scheduler is not None:
            from engine.warm_up import warm_up

            warm_up(loaded, prefill_step_size(self.settings), self._stream, attention_paths(self.settings))
        self._publish()

    def _install_scheduler(self, loaded: LoadedModel) -> None:
        from engine.scheduler import BatchScheduler, can_batch

        waiting = self._scheduler.waiting if self._scheduler is not None else []
        if self._scheduler is not None:
            self._scheduler.close()
        self._scheduler = None
        if self.settings.mlx_max_batch_size > 1 and can_batch(loaded.model, self.settings.kv_bits):
            step = prefill_step_size(self.settings)
            self._scheduler = BatchScheduler(
                loaded,
                self.memory,
                self.settings.mlx_max_batch_size,
                step,
                self._stream,
                attention_paths(self.settings),
            )
            self._scheduler.waiting.extend(waiting)
        else:
            for handle in waiting:  # requests accepted for the old model run one at a time now
                self._inbox.put(_Job(handle))

    def _sweep_now_and_then(self) -> None:
        """Every SWEEP_S, while any agent has a retention or a keep hint, ask the engine thread to sweep
        (between steps)."""
        while not self._closed:
            time.sleep(SWEEP_S)
            memory = self.memory
            if memory is None or not any(p.retention_s is not None or p.keep_until for p in memory.policies.values()):
                continue
            sweep = _Call(lambda engine: engine._sweep(), threading.Event(), publish=False)
            try:
                self._enqueue(sweep)
            except EngineClosed:
                return
            sweep.done.wait(SWEEP_S * 12)  # one at a time, however long the engine thread is busy

    def _sweep(self) -> None:
        """Housekeeping between steps: drop caches idle past their retention."""
        if self.memory is not None and self.memory.enabled and self.memory.expire_idle(time.time()):
            self._publish()

    def _publish(self) -> None:
        self._hot_view = self.memory.hot_view() if self.memory is not None and self.memory.enabled else None

    def _serve(self, handle: TurnHandle) -> None:
        from engine.generation import serve_alone

        if self._loaded is None:
            handle.fail(str(self._load_error or "no model loaded"), "internal")
            return
        self._busy = True
        try:
            serve_alone(handle, self._loaded, self.memory, self._stream, self.settings)
        finally:
            self._busy = False
            self._publish()
