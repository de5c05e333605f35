"""Training tasks, peers chosen by a run config's ``task:`` key (see ``lorakit.train.task.TASKS``)."""
