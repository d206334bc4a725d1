"""vLLM's place in the Ray tests where no GPU exists: what vLLM's engine does on Ray before it serves, written
from vLLM's source (vllm/v1/executor/ray_utils.py, `initialize_ray_cluster`, vLLM 0.33), then the loopback
stub serving on the port the server was given.

vLLM's engine core is a new Ray driver (`ray.init(address=ray_address)`, from $RAY_ADDRESS). It uses the
placement group it runs in if there is one (`ray.util.get_current_placement_group()`: never, for a driver);
otherwise it requires a free GPU on its own node, asks for a group of one {"GPU": 1} bundle per worker,
strategy PACK, the first pinned to its node (`node:<ip>` 0.001), and waits for it (PG_WAIT_TIMEOUT = 1800 s,
`--wait` here), or fails. It stays connected while it serves, so the group lives as long as the server.

On one machine every raylet has the same IP and a new driver joins the head's raylet: `--node` names the node
vLLM would run on (the actor's), for the free-GPU check; the `node:<ip>` pin matches every raylet here.

    python tests/vllm_on_ray.py --world 4 --node NODE_ID --wait 30 -- STUB ARGUMENTS...
"""

from __future__ import annotations

import argparse
import runpy
import sys

import ray
from ray._private.state import available_resources_per_node
from ray.util.placement_group import get_current_placement_group, placement_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, required=True, help="tensor × pipeline parallel size")
    parser.add_argument("--node", required=True, help="the node vLLM's engine runs on")
    parser.add_argument("--wait", type=float, default=1800.0, help="vLLM's PG_WAIT_TIMEOUT")
    parser.add_argument("stub", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    ray.init(log_to_driver=False)
    group = get_current_placement_group()
    if group is None:
        if available_resources_per_node()[args.node].get("GPU", 0) < 1:
            sys.exit(f"ValueError: Current node has no GPU available. vLLM engine cannot start without GPU "
                     f"(node {args.node})")
        specs = [{"GPU": 1.0} for _ in range(args.world)]
        specs[0][f"node:{ray.util.get_node_ip_address()}"] = 0.001
        group = placement_group(specs, strategy="PACK")
        ready, _ = ray.wait([group.ready()], timeout=args.wait)
        if not ready:
            sys.exit(f"ValueError: Cannot provide a placement group requiring {args.world} GPUs within "
                     f"{args.wait:.0f} seconds")
    print(f"placement group {group.id.hex()} ready", flush=True)
    sys.argv = ["openai_stub", *(args.stub[1:] if args.stub[:1] == ["--"] else args.stub)]
    runpy.run_module("benchmarks.stubs.openai_stub", run_name="__main__")


if __name__ == "__main__":
    main()
