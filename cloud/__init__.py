"""SkinScan cloud: MQTT consumer, full classification, storage, dashboard and feedback relay."""
