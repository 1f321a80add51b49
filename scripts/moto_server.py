"""Start moto's AWS endpoint (server mode) with two documented changes for prescale's tests.

Run by scripts/moto.sh as `python scripts/moto_server.py -H 127.0.0.1 -p PORT`; the arguments are
moto_server's own.

1. AWS Batch `UpdateComputeEnvironment`: moto 5.2.x accepts `computeResources` but drops it
   (`# TODO Implement resizing ...` in moto/batch/models.py), so `DescribeComputeEnvironments`
   would never show what an actuator applied. The patch merges the fields a managed EC2/Spot
   compute environment accepts in an update (minvCpus, desiredvCpus, maxvCpus, instanceTypes,
   allocationStrategy, bidPercentage) into the environment's `computeResources`, after the same
   validation moto applies at creation (min <= desired <= max, no negative values). Nothing else
   about moto changes: launched instances, queues and jobs behave as upstream.
2. EC2 Auto Scaling `UpdateAutoScalingGroup`: moto 5.2.x replaces the group's
   `MixedInstancesPolicy` with whatever the request carries, so an update that omits it (a
   size-only change, as `aws autoscaling update-auto-scaling-group --desired-capacity` makes)
   deletes the group's mix. AWS updates only the parameters a request specifies; the patch keeps
   the current policy when the request names neither a policy nor a launch template or
   configuration.
3. No Docker on the test machines: Batch jobs run through moto's own Docker-free "batch_simple"
   backend (the documented `{"batch": {"use_docker": false}}` config), which marks a submitted
   job finished instead of starting a container.

Request recording (moto's recorder, `/moto-api/recorder/*`) is left to the caller: scripts/moto.sh
sets MOTO_ENABLE_RECORDING so tests can check the order of every update call.
"""

import sys

from moto.batch.exceptions import ClientException, InvalidParameterValueException
from moto.batch.models import BatchBackend
from moto.autoscaling.models import FakeAutoScalingGroup
from moto.core.models import default_user_config

UPDATABLE = (
    "minvCpus",
    "desiredvCpus",
    "maxvCpus",
    "instanceTypes",
    "allocationStrategy",
    "bidPercentage",
)

_upstream_update = BatchBackend.update_compute_environment


def _update_compute_environment(
    self, compute_environment_name, state, compute_resources, service_role
):
    name, arn = _upstream_update(
        self, compute_environment_name, state, None, service_role
    )
    if compute_resources:
        env = self.get_compute_environment(compute_environment_name)
        current = dict(env.compute_resources or {})
        for key in UPDATABLE:
            if key in compute_resources and compute_resources[key] is not None:
                current[key] = compute_resources[key]
        lo = int(current.get("minvCpus", 0))
        hi = int(current.get("maxvCpus", 0))
        want = int(current.get("desiredvCpus", lo))
        if lo < 0 or want < 0 or hi < 0:
            raise InvalidParameterValueException("vCPU values must not be negative")
        if hi < lo:
            raise InvalidParameterValueException("maxVCpus must be greater than minvCpus")
        if not lo <= want <= hi:
            raise ClientException(
                f"desiredvCpus {want} must lie between minvCpus {lo} and maxvCpus {hi}"
            )
        env.compute_resources = current
    return name, arn


BatchBackend.update_compute_environment = _update_compute_environment

_upstream_asg_update = FakeAutoScalingGroup.update


def _asg_update(self, *args, **kwargs):
    names = (
        "availability_zones", "desired_capacity", "max_size", "min_size",
        "launch_config_name", "launch_template", "vpc_zone_identifier",
        "health_check_period", "health_check_type",
    )
    given = dict(zip(names, args))
    given.update(kwargs)
    keep = (
        given.get("mixed_instances_policy") is None
        and not given.get("launch_template")
        and not given.get("launch_config_name")
    )
    saved = self.mixed_instances_policy
    result = _upstream_asg_update(self, *args, **kwargs)
    if keep:
        self.mixed_instances_policy = saved
    return result


FakeAutoScalingGroup.update = _asg_update
default_user_config.setdefault("batch", {})["use_docker"] = False

if __name__ == "__main__":
    import faulthandler
    import signal

    from moto.server import main

    # `kill -USR1 <pid>` writes every thread's stack to the log: how to see where a server
    # that stopped answering is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    sys.exit(main(sys.argv[1:]))
