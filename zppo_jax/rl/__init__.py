"""The RL algorithm: rollouts and groups, rewards, prompts, the replay buffer, losses and
advantage estimators, train batches, the methods of the paper and one step's stages."""
