"""Emergency drills: the seed's runbooks rehearsed end to end, with the clock running.

    receiver.py     ``python -m agentverify.drills.receiver``: the stack's webhook receiver
                    (Alertmanager's webhook payload, Slack-style notifications, synthetic
                    check gauges), and :class:`~agentverify.drills.receiver.ReceiverClient`
    runbook.py      :class:`~agentverify.drills.runbook.RunbookRun`: a runbook of config
                    executed operation by operation, every one timed, a failure notified;
                    the agent's own operations (rate limit, cache, LLM switch) are
                    :mod:`agentverify.agent_ops`' (admin endpoint, or the seed's way)
    corrupt.py      data corruption: noise over vectors, deleted entities, poisoned cache
    watch.py        alert watchers (Prometheus and the receiver) and the known-answer prober
    steps.py        the scenario steps: ``drill``, ``runbook``, ``corrupt``,
                    ``alert_rules_test``

Importing this package imports nothing else: the receiver starts without the tool.
"""
