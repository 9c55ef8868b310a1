"""Phone page texts in English and Arabic (right to left); class names and advice reuse the kiosk's."""

from __future__ import annotations

from cloud.storage import OTHER_LABEL
from device.kiosk import i18n as kiosk_i18n

LOCALES = kiosk_i18n.LOCALES
DIRECTION = kiosk_i18n.DIRECTION

_OTHER = {"en": "Other / not assessable", "ar": "أخرى / لا يمكن تقييمها"}

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Your SkinScan report",
        "disclaimer": kiosk_i18n.STRINGS["en"]["disclaimer"],
        "cloud_result": "Cloud analysis",
        "cloud_pending": "The cloud analysis is not ready yet.",
        "device_result": "Kiosk analysis",
        "confidence": "confidence",
        "unsure": "unsure",
        "advice": "Advice",
        "feedback": "Doctor's feedback",
        "feedback_waiting": "A doctor has not reviewed this case yet. This page updates by itself.",
        "urgent": "Urgent: please see a doctor as soon as possible.",
        "by": "by",
        "messages": "Messages with the medical staff",
        "no_messages": "No messages yet.",
        "you": "You",
        "staff": "Medical staff",
        "placeholder": "Write a message to the medical staff…",
        "send": "Send",
        "sending": "Sending…",
        "send_failed": "The message could not be sent",
        "taken": "Taken",
        "language": "العربية",
        "live": "live",
        "reconnecting": "reconnecting…",
        "expired_title": "This link has expired",
        "expired_body": "Links to a report work for {days} days after the photo was taken. Ask at the clinic "
                        "for help if you still need this report.",
        "revoked_title": "This link was withdrawn",
        "revoked_body": "The clinic has switched off this link. Ask the medical staff if you need the report.",
        "not_found_title": "Report not found",
        "not_found_body": "This link does not open any report. Check that you scanned the whole code.",
        "too_long": "A message may have at most {n} characters.",
        "too_many": "Too many messages; please wait a little before sending another.",
    },
    "ar": {
        "title": "تقرير SkinScan الخاص بك",
        "disclaimer": kiosk_i18n.STRINGS["ar"]["disclaimer"],
        "cloud_result": "تحليل السحابة",
        "cloud_pending": "تحليل السحابة غير جاهز بعد.",
        "device_result": "تحليل الجهاز",
        "confidence": "الثقة",
        "unsure": "غير متأكد",
        "advice": "النصيحة",
        "feedback": "ملاحظات الطبيب",
        "feedback_waiting": "لم يراجع الطبيب هذه الحالة بعد. تتحدّث هذه الصفحة تلقائيًا.",
        "urgent": "عاجل: يرجى مراجعة طبيب في أقرب وقت ممكن.",
        "by": "بواسطة",
        "messages": "الرسائل مع الطاقم الطبي",
        "no_messages": "لا توجد رسائل بعد.",
        "you": "أنت",
        "staff": "الطاقم الطبي",
        "placeholder": "اكتب رسالة إلى الطاقم الطبي…",
        "send": "إرسال",
        "sending": "جارٍ الإرسال…",
        "send_failed": "تعذّر إرسال الرسالة",
        "taken": "وقت الالتقاط",
        "language": "English",
        "live": "مباشر",
        "reconnecting": "جارٍ إعادة الاتصال…",
        "expired_title": "انتهت صلاحية هذا الرابط",
        "expired_body": "يعمل رابط التقرير لمدة {days} أيام بعد التقاط الصورة. اطلب المساعدة من العيادة "
                        "إذا كنت لا تزال بحاجة إلى هذا التقرير.",
        "revoked_title": "تم سحب هذا الرابط",
        "revoked_body": "أوقفت العيادة هذا الرابط. اسأل الطاقم الطبي إذا كنت بحاجة إلى التقرير.",
        "not_found_title": "التقرير غير موجود",
        "not_found_body": "هذا الرابط لا يفتح أي تقرير. تأكد من أنك مسحت الرمز بالكامل.",
        "too_long": "يمكن أن تحتوي الرسالة على {n} حرفًا كحد أقصى.",
        "too_many": "رسائل كثيرة جدًا؛ يرجى الانتظار قليلًا قبل إرسال رسالة أخرى.",
    },
}


def locale_of(value: str | None, default: str) -> str:
    return kiosk_i18n.locale_of(value, kiosk_i18n.locale_of(default, "en"))


def class_name(label: str, locale: str) -> str:
    if label == OTHER_LABEL:
        return _OTHER[locale]
    return kiosk_i18n.class_name(label, locale)


def advice(label: str, unsure: bool, dangerous: list[str], locale: str) -> tuple[str, str]:
    """(urgency, advice) for a model's answer, the same wording as the kiosk's report."""
    urgency = "unsure" if unsure else kiosk_i18n.urgency_of(label, dangerous)
    return urgency, kiosk_i18n.advice(label, urgency, locale)
