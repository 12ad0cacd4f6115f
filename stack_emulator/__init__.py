"""A stack emulator for pulumi-docker: runs this repository's Pulumi program (infra/) over a real
stack file and changes a real Docker engine the way `pulumi up` would — diffing against the
stack's recorded state, replacing or updating each resource by the provider's own rules, in the
engine's order — for trying stacks on one machine and for the tests. Users deploy with `pulumi up`.

    program.py         run the program under Pulumi's mocks; what it registers (Graph)
    outputs.py         what each provider answers (state kept, images made real, secrets computed)
    schema.py          per resource type: which input changes replace, update or only record
    plan.py            Pulumi's step rules: create / update / replace (order, cascades) / delete
    apply.py           Pulumi's step execution: parallel by dependencies, delete phase last
    docker_provider.py terraform-provider-docker's create / update / delete on the engine
    swarm_provider.py  its Swarm resources (service, secret, config) on a Swarm manager's engine
    images.py          local stand-ins of the pinned upstream images (stand_ins/), the service image
    state.py           the stack's state under var/stacks/<stack>/ (0600)
    stack.py           up / preview / down / status, and var/stack-<stack>.env

Each rule names its source (pulumi/pulumi, pulumi/pulumi-docker, kreuzwerker/terraform-provider-docker)
next to the code; docs/pulumi.md has the table.
"""
