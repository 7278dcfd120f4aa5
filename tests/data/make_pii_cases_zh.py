"""Generates tests/data/pii_cases_zh.jsonl (kept in the repo; this script is only how it was written)."""

import json
import random
from datetime import date, timedelta
from pathlib import Path

rng = random.Random(22)
W = 0xFEE0


def fw(s):
    return "".join(chr(ord(c) + W) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in s)


SURN = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟 芳 娜 秀英 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 秀兰 霞".split()


def name():
    return rng.choice(SURN) + rng.choice(GIVEN)


PREF = "130 131 132 133 135 136 137 138 139 145 147 150 151 152 153 155 156 157 158 159 166 170 173 176 177 178 180 181 182 183 185 186 187 188 189 191 198 199".split()


def mobile_digits():
    d = rng.choice(PREF) + "".join(rng.choice("0123456789") for _ in range(8))
    return d if not d.endswith("00000") else mobile_digits()


def mobile():
    d = mobile_digits()
    style = rng.randrange(10)
    if style == 0:
        return d
    if style == 1:
        return f"{d[:3]} {d[3:7]} {d[7:]}"
    if style == 2:
        return f"{d[:3]}-{d[3:7]}-{d[7:]}"
    if style == 3:
        return f"+86 {d}"
    if style == 4:
        return f"+86 {d[:3]} {d[3:7]} {d[7:]}"
    if style == 5:
        return f"+86-{d}"
    if style == 6:
        return f"(+86){d}"
    if style == 7:
        return fw(d)
    if style == 8:
        return f"0086 {d}"
    return f"{d[:3]}－{d[3:7]}－{d[7:]}"


AREA3 = "010 020 021 022 023 024 025 027 028 029".split()
AREA4 = "0311 0351 0371 0431 0451 0471 0512 0531 0551 0571 0574 0591 0731 0755 0756 0769 0771 0791 0851 0871 0898 0931".split()


def landline():
    if rng.random() < 0.5:
        area, local = (
            rng.choice(AREA3),
            rng.choice("2345678") + "".join(rng.choice("0123456789") for _ in range(7)),
        )
    else:
        area, local = (
            rng.choice(AREA4),
            rng.choice("2345678") + "".join(rng.choice("0123456789") for _ in range(rng.choice([6, 7]))),
        )
    style = rng.randrange(8)
    if style == 0:
        return f"{area}-{local}"
    if style == 1:
        return f"({area}){local}"
    if style == 2:
        return f"（{area}）{local}"
    if style == 3:
        return f"{area} {local}"
    if style == 4:
        return f"({area}) {local[:4]} {local[4:]}" if len(local) == 8 else f"({area}) {local[:3]} {local[3:]}"
    if style == 5:
        return f"{area}－{local}"
    if style == 6:
        return f"{area}-{local[:4]}-{local[4:]}" if len(local) == 8 else f"{area}-{local[:3]}-{local[3:]}"
    return f"+86 {area[1:]} {local}"


PROV = "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 65".split()
WTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_id(valid=True):
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 70))
    body = (
        rng.choice(PROV)
        + f"{rng.randrange(1, 30):02d}{rng.randrange(1, 30):02d}"
        + born.strftime("%Y%m%d")
        + f"{rng.randrange(1000):03d}"
    )
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, WTS, strict=True)) % 11]
    if not valid:
        check = rng.choice([c for c in "0123456789" if c != check])
    return body + check


def id_written(i):
    style = rng.randrange(8)
    if style == 0 and i.endswith("X"):
        return i[:-1] + "x"
    if style == 1:
        return fw(i)
    return i


USERS = "zhangwei li.na wangfang88 liu_yang chen.jing yang-lei huangmin2020 zhao.qiang wu_jie zhouxiu xu.tao sunli ma.chao zhuyan hu-jun guo.xia".split()
DOMS = "163.com 126.com qq.com sina.com sina.cn foxmail.com gmail.com outlook.com yeah.net mail.tsinghua.edu.cn pku.edu.cn company.com.cn example.cn 139.com sohu.com aliyun.com".split()


def email():
    u, d = rng.choice(USERS) + (str(rng.randrange(100)) if rng.random() < 0.3 else ""), rng.choice(DOMS)
    style = rng.randrange(6)
    if style == 0:
        return f"{u}@{d}"
    if style == 1:
        return f"{u}＠{d}"
    if style == 2:
        return f"{u}＠{d.replace('.', '．')}"
    if style == 3:
        return fw(f"{u}@{d}")
    if style == 4:
        return f"{u}@{d.replace('.', '．')}"
    return f"{u}＠{d}"


MOBILE_T = [
    "请联系{n}，手机{x}。",
    "我的手机号是{x}，有事打我电话。",
    "联系人：{n}  电话：{x}",
    "收件人{n}，{x}，北京市海淀区中关村大街27号。",
    "如有疑问请致电{x}（工作日9:00-18:00）。",
    "{n}的手机：{x}",
    "报名热线 {x}，联系人{n}老师。",
    "快递到了，打{x}找{n}。",
    "手机/微信同号：{x}",
    "紧急联系人{n}（{x}）",
    "【订单通知】收货人：{n}，联系电话：{x}，请保持电话畅通。",
    "Tel: {x}（{n}）",
    "我换号了，新号码{x}，旧号停用。",
    "失物招领：捡到钱包一个，请失主拨打{x}。",
    "{n}，{x}，身高175，爱好篮球。",
]
LAND_T = [
    "公司总机：{x}，传真另行通知。",
    "办公室电话{x}，{n}收。",
    "预约电话：{x}（周一至周五）",
    "地址：上海市徐汇区漕溪北路88号，电话{x}。",
    "如需开具发票，请拨打财务部{x}联系{n}。",
    "{n}家里的座机是{x}。",
    "订餐电话 {x}",
    "客服座机：{x}，手机请留言。",
    "联系电话：{x}转分机。",
    "本店电话{x}，欢迎惠顾。",
]
ID_T = [
    "身份证号：{x}",
    "本人{n}，身份证号码{x}，现申请补办。",
    "乘客{n}（身份证 {x}）已值机。",
    "请核对身份证号{x}是否正确。",
    "投保人证件号码：{x}；联系电话另附。",
    "姓名：{n}，公民身份号码：{x}",
    "{n} {x} 男 汉族",
    "证件类型：居民身份证，证件号：{x}。",
]
MAIL_T = [
    "邮箱：{x}",
    "简历请发送至{x}，注明应聘岗位。",
    "{n}的邮箱是{x}，有事可以写信。",
    "联系方式：{x}（{n}）",
    "投稿邮箱 {x}，一经录用即通知。",
    "请把作业发到{x}。",
    "如有问题请邮件{x}，谢谢！",
    "E-mail：{x}",
]
cases = []


def add(templates, gen, typ, kind, n):
    for _ in range(n):
        x = gen()
        cases.append(
            {
                "text": rng.choice(templates).format(x=x, n=name()),
                "pii": [{"type": typ, "value": x, "kind": kind}],
            }
        )


add(MOBILE_T, mobile, "PHONE", "mobile", 80)
add(LAND_T, landline, "PHONE", "landline", 60)
add(ID_T, lambda: id_written(cn_id()), "CN_ID", "resident_id", 50)
add(MAIL_T, email, "EMAIL", "email", 60)
# two of a kind in one text
for _ in range(10):
    m, e = mobile(), email()
    cases.append(
        {
            "text": f"联系人{name()}，手机{m}，邮箱{e}。",
            "pii": [
                {"type": "PHONE", "value": m, "kind": "mobile"},
                {"type": "EMAIL", "value": e, "kind": "email"},
            ],
        }
    )
for _ in range(10):
    line, i = landline(), cn_id()
    cases.append(
        {
            "text": f"户主{name()}，身份证{i}，家庭电话{line}。",
            "pii": [
                {"type": "CN_ID", "value": i, "kind": "resident_id"},
                {"type": "PHONE", "value": line, "kind": "landline"},
            ],
        }
    )


def digits(n):
    return "".join(rng.choice("0123456789") for _ in range(n))


NEG = [
    lambda: (
        f"订单号：{date(2024, rng.randrange(1, 13), rng.randrange(1, 28)).strftime('%Y%m%d')}{digits(10)}，请妥善保存。"
    ),
    lambda: f"订单编号 E{digits(14)}，预计三日内发货。",
    lambda: f"运单号 SF{digits(12)}，已由顺丰揽收。",
    lambda: f"中通快递单号{rng.choice('7')}{digits(14)}",
    lambda: (
        f"ISBN {rng.choice(['978-7-02', '978-7-5327', '978-7-108', '978-7-5442'])}-{digits(4)}-{digits(1)}"
    ),
    lambda: f"ISBN 9787{digits(9)}，定价{rng.randrange(20, 99)}.00元",
    lambda: f"《全唐诗》卷{rng.randrange(1, 900)}第{rng.randrange(1, 200)}首",
    lambda: (
        f"poet.tang.{rng.choice([0, 1000, 2000])}.json 第{digits(4)}首，共{rng.randrange(1000, 1003)}首。"
    ),
    lambda: f"唐诗三百首第{rng.randrange(1, 320)}首《静夜思》，{rng.randrange(1000, 9999)}字评注。",
    lambda: f"{rng.randrange(1990, 2025)}年{rng.randrange(1, 13)}月{rng.randrange(1, 29)}日，天气晴。",
    lambda: (
        f"会议时间：{rng.randrange(2023, 2026)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d} {rng.randrange(8, 18):02d}:30"
    ),
    lambda: (
        f"日期 {rng.randrange(2020, 2026)}/{rng.randrange(1, 13):02d}/{rng.randrange(1, 29):02d}，编号{digits(6)}"
    ),
    lambda: f"合同金额￥{rng.randrange(1, 999)},{digits(3)},{digits(3)}.00元，大写另附。",
    lambda: (
        f"本季度营收{rng.randrange(100, 9999)}.{digits(2)}万元，同比增长{rng.randrange(1, 40)}.{digits(1)}%。"
    ),
    lambda: f"总价：{rng.randrange(1, 99)}{digits(7)}元",
    lambda: f"时间戳 {rng.choice(['16', '17'])}{digits(8)}",
    lambda: f"毫秒时间戳{rng.choice(['16', '17'])}{digits(11)}",
    lambda: f"QQ群：{rng.randrange(1, 9)}{digits(8)}，欢迎加入。",
    lambda: f"邮编{rng.choice(['100084', '200030', '518057', '310027', '610041'])}，地址详见信封。",
    lambda: (
        f"统一社会信用代码：91{digits(6)}{rng.choice('MA')}{rng.choice('ABCDE')}{digits(7)}{rng.choice('XYZ0123')}"
    ),
    lambda: f"发票代码{digits(12)}，发票号码{digits(8)}。",
    lambda: f"身份证号：{cn_id(valid=False)}（校验位有误，请重新填写）",
    lambda: f"学号{rng.choice(['2019', '2020', '2021', '2022'])}{digits(6)}，班级{rng.randrange(1, 12)}班。",
    lambda: f"工号 {digits(7)}，部门编号 {digits(4)}",
    lambda: (
        f"版本号 v{rng.randrange(1, 20)}.{rng.randrange(0, 20)}.{rng.randrange(0, 200)}，更新于{rng.randrange(2020, 2026)}年。"
    ),
    lambda: f"第{rng.randrange(1, 30)}届全国运动会共{rng.randrange(1000, 99999)}人参赛。",
    lambda: f"回复@{name()}：收到，谢谢！",
    lambda: f"转发微博 @人民日报 #{rng.randrange(2020, 2026)}高考#",
    lambda: f"苹果＠{rng.randrange(2, 20)}元/斤，香蕉＠{rng.randrange(2, 20)}元/斤。",
    lambda: "邮箱请见附件，电话另行通知。",
    lambda: f"比分{rng.randrange(0, 120)}:{rng.randrange(0, 120)}，第{rng.randrange(1, 5)}节。",
    lambda: f"车牌号京A{digits(5)}，停在B{rng.randrange(1, 4)}层。",
    lambda: f"房间号{rng.randrange(1, 30)}{digits(2)}，Wi-Fi密码{digits(8)}。",
    lambda: f"银行流水号{date(2024, rng.randrange(1, 13), 1).strftime('%Y%m')}{digits(12)}",
    lambda: f"坐标 {rng.randrange(20, 50)}.{digits(6)}, {rng.randrange(100, 130)}.{digits(6)}",
    lambda: (
        f"人口{rng.randrange(1, 15)}{digits(2)},{digits(3)},{digits(3)}人（{rng.randrange(2000, 2024)}年）"
    ),
    lambda: f"验证码{digits(6)}，五分钟内有效。",
    lambda: (
        f"航班CA{digits(4)}，座位{rng.randrange(1, 60)}{rng.choice('ABCDEF')}，{rng.randrange(8, 23):02d}:{rng.choice(['05', '30', '45'])}起飞。"
    ),
    lambda: f"商品条码69{digits(11)}",
    lambda: f"全角数字：第{fw(str(rng.randrange(1, 999)))}号，{fw(str(rng.randrange(2000, 2025)))}年。",
    lambda: (
        f"区间{rng.randrange(0, 10)}.{digits(1)}-{rng.randrange(10, 99)}.{digits(1)}，均值{rng.randrange(10, 99)}.{digits(2)}"
    ),
    lambda: f"{rng.choice(['13', '15', '18'])}{digits(7)}（九位，不是手机号）",
    lambda: f"编号{rng.choice(['13', '15', '18'])}{digits(10)}",
    lambda: f"床前明月光，疑是地上霜。举头望明月，低头思故乡。（第{rng.randrange(1, 366)}首）",
]
for k in range(200):
    cases.append({"text": NEG[k % len(NEG)](), "pii": []})
# Written by hand: list and prefix forms seen in real Chinese text, and negatives right next to them.
EXTRA = [
    (
        "手机：13812345678/13987654321（微信同号）",
        [("PHONE", "13812345678", "mobile"), ("PHONE", "13987654321", "mobile")],
    ),
    ("联系电话 86-15912345678，王先生。", [("PHONE", "86-15912345678", "mobile")]),
    ("境外请拨 86 186 1234 5678。", [("PHONE", "86 186 1234 5678", "mobile")]),
    ("总机010-62781234-8001，转人事部。", [("PHONE", "010-62781234-8001", "landline")]),
    ("电话：0755-26581234转602", [("PHONE", "0755-26581234", "landline")]),
    (
        "传真（021）5489 2233，电话（021）5489 2234。",
        [("PHONE", "（021）5489 2233", "landline"), ("PHONE", "（021）5489 2234", "landline")],
    ),
    ("身份证：320106 19850612 0419", [("CN_ID", "320106 19850612 0419", "resident_id")]),
    ("证件号 440304-1992-1108-2531，请核对。", [("CN_ID", "440304-1992-1108-2531", "resident_id")]),
    (
        "户籍信息：５１０１０７１９７７０２０３３８６２",
        [("CN_ID", "５１０１０７１９７７０２０３３８６２", "resident_id")],
    ),
    (
        "请用ＱＱ邮箱 ｚｈａｎｇｓａｎ＠ｑｑ．ｃｏｍ 联系我",
        [("EMAIL", "ｚｈａｎｇｓａｎ＠ｑｑ．ｃｏｍ", "email")],
    ),
    ("邮箱 Li.Ming＠PKU．EDU．CN（大写也可以）", [("EMAIL", "Li.Ming＠PKU．EDU．CN", "email")]),
    (
        "座机（０２０）８７６５４３２１，手机１５８－１２３４－５６７８",
        [
            ("PHONE", "（０２０）８７６５４３２１", "landline"),
            ("PHONE", "１５８－１２３４－５６７８", "mobile"),
        ],
    ),
    ("ISBN 978-7-5327-4923-5（上海译文出版社，2010年）", []),
    ("第13800138首？不，《全唐诗》只有四万八千九百多首。", []),
    ("价格：13,800,138元；成交量1380万手。", []),
    ("2024年12月04日 13:80:01 系统日志", []),
    ("快递单号 YT7412345678901，圆通速递。", []),
    ("订单号：2024120413800138000（共19位）", []),
    ("分数线 138/150，位次 13800。", []),
    ("这首诗编号 86-2345，见附录。", []),
    ("身份证号：110108196809150725（末位有误）", []),
    ("他在微博上 @张三 说：明天见。", []),
    ("单价＠3.5元，合计￥１３８元。", []),
    ("电话号码格式：1XX-XXXX-XXXX，请勿填写座机。", []),
    ("区号010，邮编100084，门牌号138号。", []),
]
for text, pii in EXTRA:
    cases.append({"text": text, "pii": [{"type": t, "value": v, "kind": k} for t, v, k in pii]})
rng.shuffle(cases)
with open(Path(__file__).with_name("pii_cases_zh.jsonl"), "w", encoding="utf-8") as f:
    for c in cases:
        f.write(json.dumps(c, ensure_ascii=False) + "\n")
print(len(cases))
