"""Built-in task families of maml_rl, found through the `maml_rl.task_families` entry points."""
