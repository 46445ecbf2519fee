"""Ray Serve apps of the triage API: thin deployments over `alliedium.serving.api` (no training code here).

    serve run serve.app:app            # from the checkout root; or: serve deploy serve/config.yaml
    alliedium serve                    # the same app, started on localhost

`app` is the triage API: the FastAPI ingress `TriageAPI` plus `ModelPool`, a deployment
whose replicas keep tenants' models loaded (least recently used first out, at most `serve_models_memory_mb`
of models and `serve_models_per_replica` tenants; `@serve.multiplexed`, keyed by tenant, routes a tenant's
requests to a replica that held it lately) and swap in a newly promoted version within `serve_poll_seconds`
(a tenant not asked for in the last ten polls: checked in the background from its next request on).
With `serve_models_in_ingress` the ingress replicas hold the multiplexed models themselves: one
hop less per triage (what a small machine wants), at the price of scaling models and HTTP together;
`serve_ingress_replicas` then sets how many processes answer (one per core is the usual choice).
`echo` is a no-op deployment, the baseline of `alliedium bench serve`.
"""
from __future__ import annotations
import asyncio, logging, time

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from alliedium.config import Settings
from alliedium.serving.api import (AppArgs, ModelsUnavailable, SlotCache, TenantSlot, make_api, poll_promotions,
                                   run_training_job, settings_overrides)

log = logging.getLogger('ray.serve')
# tenants a replica names to Serve's router (its multiplexed LRU): Serve sets a metric per named tenant ten times a
# second, which with 1,000 named took 13% of a replica's time (py-spy); the replica holds more (`SlotCache`)
ROUTED_TENANTS = 64


class _ModelHolder:
    """What a replica holding tenants' models does: keep their slots (`SlotCache`: LRU bounded by memory and count),
    poll promotions. Serve's multiplexing (`tenant`) only tracks which tenants a replica holds, for routing."""
    def _hold_models(self):
        # a held tenant not asked for in the poller's rounds is checked when next asked for, while it answers
        self.cache = SlotCache(self.settings, stale_seconds=2 * self.settings.serve_poll_seconds, background=True,
                               log=log)
        self.slots = self.cache.slots
        polling = poll_promotions(self.slots, self.settings.serve_poll_seconds, log)
        self.poller = asyncio.get_event_loop().create_task(polling)

    async def _slot(self, tenant: str) -> TenantSlot:
        "The tenant's loaded slot; Serve's multiplexed LRU (`tenant`) hears of a use at most once a second."
        # Serve's bookkeeping of a multiplexed call (metrics, LRU) costs about 0.2 ms, so not on every triage
        slot, now = await self.cache.get(tenant), time.monotonic()
        if now - getattr(slot, 'touched', 0.0) > 1.0:
            await self.tenant(tenant)
            slot.touched = now
        return slot

    async def loaded(self) -> dict:
        "Tenants held by this replica and their versions (for tests and the benchmark)."
        return {t: dict(versions=s.versions, load_seconds=s.load_seconds, bytes=s.nbytes)
                for t, s in self.slots.items()}


def tenant_models_deployment(settings: Settings):
    "The tenant-model deployment, built per app: `max_num_models_per_replica` is fixed when decorated."

    @serve.deployment(name='ModelPool', num_replicas=settings.serve_model_replicas,
                      ray_actor_options=dict(num_cpus=settings.serve_replica_cpus), max_ongoing_requests=64)
    class ModelPool(_ModelHolder):
        "Tenants' models, multiplexed over the replicas by tenant id."
        def __init__(self, settings: dict):
            self.settings = Settings(**settings)
            self._hold_models()

        @serve.multiplexed(max_num_models_per_replica=min(settings.serve_models_per_replica, ROUTED_TENANTS))
        async def tenant(self, tenant: str) -> str: return tenant  # (the slot itself is in `self.cache`)

        async def triage(self, issue: dict) -> dict:
            return (await self._slot(serve.get_multiplexed_model_id())).triage(issue)

        async def triage_many(self, issues: list) -> list:
            return (await self._slot(serve.get_multiplexed_model_id())).triage_many(issues)

    return ModelPool


def triage_api_deployment(settings: Settings):
    "The HTTP ingress deployment (built per app, like `ModelPool`)."

    @serve.deployment(name='TriageAPI', num_replicas=settings.serve_ingress_replicas, max_ongoing_requests=256)
    @serve.ingress()
    class TriageAPI(_ModelHolder):
        "The HTTP ingress: DESIGN.md's routes (`make_api`); triage goes to `ModelPool` or is answered here."
        def __init__(self, models: DeploymentHandle | None, settings: dict):
            self.models, self.settings = models, Settings(**settings)
            self.train_task = ray.remote(run_training_job).options(num_cpus=self.settings.serve_train_cpus,
                                                                   max_retries=0)
            self.jobs = {}  # run_id -> ObjectRef: keeps the task's result alive until it is collected
            if models is None: self._hold_models()

        def __serve_build_asgi_app__(self):
            return make_api(self)

        @serve.multiplexed(max_num_models_per_replica=min(settings.serve_models_per_replica, ROUTED_TENANTS))
        async def tenant(self, tenant: str) -> str: return tenant  # (the slot itself is in `self.cache`)

        async def _pool(self, call) -> dict | list:
            "A ModelPool call's answer; its user error unwrapped; a replica dead or silent is a 503 to retry."
            task = asyncio.ensure_future(call)  # shielded: a slow first load goes on, and the retry finds it loaded
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # an abandoned call's error is read
            try: return await asyncio.wait_for(asyncio.shield(task), self.settings.serve_model_timeout)
            except ray.exceptions.RayTaskError as e: raise (e.cause if isinstance(e.cause, Exception) else e) from None
            except (ray.exceptions.RayActorError, TimeoutError) as e:  # SIGKILLed, its node lost, or stuck
                what = 'stopped' if isinstance(e, ray.exceptions.RayActorError) else \
                    f'did not answer within {self.settings.serve_model_timeout:g}s (ALLIEDIUM_SERVE_MODEL_TIMEOUT)'
                raise ModelsUnavailable(f"the replica holding this tenant's models {what}: retry") from None

        async def triage(self, tenant: str, issue: dict) -> dict:
            if self.models is None: return (await self._slot(tenant)).triage(issue)
            return await self._pool(self.models.options(multiplexed_model_id=tenant).triage.remote(issue))

        async def triage_batch(self, tenant: str, issues: list) -> list:
            "Several issues of one tenant in one call (one hop, one prediction per model)."
            if self.models is None: return (await self._slot(tenant)).triage_many(issues)
            return await self._pool(self.models.options(multiplexed_model_id=tenant).triage_many.remote(issues))

        def launch_training(self, tenant: str, run_id: str, tasks):
            self.jobs = {k: v for k, v in self.jobs.items() if not ray.wait([v], timeout=0)[0]}
            self.jobs[run_id] = self.train_task.remote(tenant, run_id, tasks, settings_overrides(self.settings))

        async def serve_status(self) -> dict:
            try:
                st = await asyncio.to_thread(serve.status)
                apps = {name: a.status.value if hasattr(a.status, 'value') else str(a.status)
                        for name, a in st.applications.items()}
                mine = serve.get_replica_context().app_name
                return dict(status=apps.get(mine, 'UNKNOWN'), app=mine, applications=apps)
            except Exception as e: return dict(status='UNKNOWN', detail=str(e))

    return TriageAPI


def build_app(args: AppArgs) -> serve.Application:
    "The triage API app (typed builder for `serve run serve.app:build_app` and `serve/config.yaml`)."
    s = args.resolved()
    opts = settings_overrides(s)
    models = None if s.serve_models_in_ingress else tenant_models_deployment(s).bind(opts)
    return triage_api_deployment(s).options(ray_actor_options=dict(num_cpus=s.serve_replica_cpus)).bind(models, opts)


@serve.deployment(name='Echo', ray_actor_options=dict(num_cpus=0.25), max_ongoing_requests=256)
class Echo:
    "No-op baseline: answers the JSON body it gets."
    async def __call__(self, request: Request) -> dict:
        return await request.json()


def build_echo(args: AppArgs) -> serve.Application:
    "The echo baseline app (in `serve_ingress_replicas` replicas: one unless set)."
    s = args.resolved()
    return Echo.options(num_replicas=s.serve_ingress_replicas,
                        ray_actor_options=dict(num_cpus=s.serve_replica_cpus)).bind()


app = build_app(AppArgs())
echo = build_echo(AppArgs())
