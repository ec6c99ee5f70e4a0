"""Pulling a ClientApp task from a SuperNode's Runtime API, as Flower's
``flwr.supernode.runtime.run_clientapp.pull_task_input`` does, with a short retry for
the message's objects (:data:`PULL_BACKOFF_S`) for a worker that asks at once."""

from __future__ import annotations

from typing import Any

# first and longest retry pause for message objects the node is still fetching
PULL_BACKOFF_S = (0.01, 0.1)


def pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """Flower's ``run_clientapp.pull_task_input`` with a short retry for the message's
    objects.

    The SuperNode creates the task before it has fetched the message's objects from the
    SuperLink; Flower's pull retries an unavailable object after 1 s, 2 s, 4 s ... (a
    process started per message rarely asks that early). A warm worker asks at once, so
    it retries after ``PULL_BACKOFF_S[0]``, doubling up to ``PULL_BACKOFF_S[1]``.
    """
    from flwr.app import Message
    from flwr.common.serde import context_from_proto
    from flwr.common.serde import fab_from_proto
    from flwr.common.serde import run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611

    # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest
    from flwr.proto.runtime_pb2 import PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import (
        pull_and_inflate_object_from_tree,
    )
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context = context_from_proto(res.context)
    run = run_from_proto(res.run)
    fab = fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(
            client.ConfirmMessageReceived, node, context.run_id
        ),
        return_type=Message,
        initial_backoff=PULL_BACKOFF_S[0],
        backoff_cap=PULL_BACKOFF_S[1],
    )
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab
