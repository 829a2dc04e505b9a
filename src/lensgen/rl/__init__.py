"""RL post-training with DiffusionNFT: rewards, the prompt set's use, the NFT objective and its trainer."""
