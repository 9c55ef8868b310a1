"""SkinScan kiosk: camera, preprocessing, on-device inference, kiosk page, outbox."""
