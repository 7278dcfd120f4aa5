"""The role names of chat messages: every spelling seen in public exports, folded to the three a chat
template knows. Shared by the chat and preference formats."""

# Every role spelling seen in public chat exports, folded to the three roles a chat template knows.
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}
