"""Chat with memory (POST /api/v1/chat/{session_id}): history in PostgreSQL, a memory window fed to the
model through LangChain, the reply computed by the `cortex.chat.reply` task on the gpu queue."""
