"""Emergency drills: the seed's runbooks rehearsed end to end, with the clock running.

    receiver.py     ``python -m agentverify.drills.receiver``: the stack's webhook receiver
                    (Alertmanager's webhook payload, Slack-style notifications, synthetic
                    check gauges), and :class:`~agentverify.drills.receiver.ReceiverClient`
    operations.py   the agent's admin operations a runbook uses (rate limit, cache, LLM
                    switch) over the reference agent's admin API
    runbook.py      :class:`~agentverify.drills.runbook.RunbookRun`: a runbook of config
                    executed operation by operation, every one timed, a failure notified
    corrupt.py      data corruption: noise over vectors, deleted entities, poisoned cache
    watch.py        alert watchers (Prometheus and the receiver) and the known-answer prober
    steps.py        the scenario steps: ``drill``, ``runbook``, ``corrupt``,
                    ``alert_rules_test``

Importing this package imports nothing else: the receiver starts without the tool.
"""
